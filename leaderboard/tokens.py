"""API tokens: made once, shown once, stored only as their sha256; `create_token` is the admin command.

    from leaderboard.tokens import create_token
    token = create_token("alice", admin=False)     # `speedrun token create alice`

A token is `sr_` + 32 random bytes (urlsafe base64). Looking one up hashes it and compares hashes,
so a leaked database holds nothing a client could send.
"""

import hashlib
import secrets

from sqlmodel import Session, select

from leaderboard.db import get_engine, migrate
from leaderboard.models import ApiToken, Submitter
from leaderboard.settings import Settings, database_url, get_settings

PREFIX = "sr_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, *, name: str, admin: bool = False) -> str:
    """A new token for submitter `name` (created if new; `admin` can only grant, never revoke, admin)."""
    submitter = session.exec(select(Submitter).where(Submitter.name == name)).first()
    if submitter is None:
        submitter = Submitter(name=name, is_admin=admin)
        session.add(submitter)
        session.flush()
    elif admin and not submitter.is_admin:
        submitter.is_admin = True
        session.add(submitter)
    token = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(submitter_id=submitter.id, token_sha256=hash_token(token)))
    session.commit()
    return token


def submitter_for_token(session: Session, *, token: str) -> Submitter | None:
    row = session.exec(
        select(Submitter)
        .join(ApiToken, ApiToken.submitter_id == Submitter.id)
        .where(ApiToken.token_sha256 == hash_token(token), ApiToken.revoked == False)  # noqa: E712
    ).first()
    return row


def create_token(name: str, admin: bool = False, *, settings: Settings | None = None) -> str:
    """`speedrun token create NAME [--admin]`: migrate the database if needed, then issue and return a token."""
    settings = settings or get_settings()
    url = database_url(settings)
    migrate(url)
    with Session(get_engine(url)) as session:
        return issue_token(session, name=name, admin=admin)
