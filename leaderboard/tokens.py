"""API tokens: made once, shown once, stored only as their sha256; they expire, and can be revoked.

    from leaderboard.tokens import create_token, revoke_tokens_cli
    token = create_token("alice", admin=False)     # `speedrun token create alice` (expires: Settings.token_ttl_days)
    token = create_token("gpu-box", runner=True)   # a runner machine: `speedrun token create gpu-box --runner`
    revoke_tokens_cli("alice")                     # `speedrun token revoke alice`: every live token of alice

A token is `sr_` + 32 random bytes (urlsafe base64). Looking one up hashes it and compares hashes,
so a leaked database holds nothing a client could send. A revoked or expired token is refused (401).
"""

import hashlib
import secrets
from datetime import timedelta

from sqlmodel import Session, select

from leaderboard.db import get_engine, migrate
from leaderboard.models import ApiToken, Submitter, utcnow
from leaderboard.settings import Settings, database_url, get_settings

PREFIX = "sr_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(
    session: Session, *, name: str, admin: bool = False, runner: bool = False, ttl_days: float = 90.0
) -> tuple[str, ApiToken]:
    """A new token for submitter `name` (created if new; `admin` and `runner` can only grant a role, never revoke it).

    A runner account takes reproduction jobs (routers/runners.py): a machine an admin trusts to re-run them."""
    submitter = session.exec(select(Submitter).where(Submitter.name == name)).first()
    if submitter is None:
        submitter = Submitter(name=name, is_admin=admin, is_runner=runner)
        session.add(submitter)
        session.flush()
    elif (admin and not submitter.is_admin) or (runner and not submitter.is_runner):
        submitter.is_admin, submitter.is_runner = submitter.is_admin or admin, submitter.is_runner or runner
        session.add(submitter)
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        submitter_id=submitter.id, token_sha256=hash_token(token), expires_at=utcnow() + timedelta(days=ttl_days)
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return token, row


def _live(row: ApiToken) -> bool:
    if row.revoked:
        return False
    if row.expires_at is None:
        return True
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=utcnow().tzinfo)
    return expires > utcnow()


def lookup(session: Session, *, token: str) -> tuple[Submitter, ApiToken] | None:
    """(submitter, token row) of a live token, else None."""
    found = session.exec(
        select(Submitter, ApiToken)
        .join(ApiToken, ApiToken.submitter_id == Submitter.id)
        .where(ApiToken.token_sha256 == hash_token(token))
    ).first()
    return found if found is not None and _live(found[1]) else None


def revoke(session: Session, *, token_row: ApiToken) -> None:
    token_row.revoked = True
    session.add(token_row)
    session.commit()


def revoke_tokens(session: Session, *, name: str) -> int:
    """Revoke every live token of submitter `name`; how many. ValueError if there is no such submitter."""
    submitter = session.exec(select(Submitter).where(Submitter.name == name)).first()
    if submitter is None:
        raise ValueError(f"no submitter {name!r}: `speedrun token create {name}` makes one")
    rows = [t for t in session.exec(select(ApiToken).where(ApiToken.submitter_id == submitter.id)).all() if _live(t)]
    for row in rows:
        row.revoked = True
        session.add(row)
    session.commit()
    return len(rows)


def create_token(name: str, admin: bool = False, *, runner: bool = False, settings: Settings | None = None) -> str:
    """`speedrun token create NAME [--admin] [--runner]`: migrate the database if needed, then issue a token."""
    settings = settings or get_settings()
    url = database_url(settings)
    migrate(url)
    with Session(get_engine(url)) as session:
        return issue_token(session, name=name, admin=admin, runner=runner, ttl_days=settings.token_ttl_days)[0]


def revoke_tokens_cli(name: str, *, settings: Settings | None = None) -> int:
    """`speedrun token revoke NAME`: revoke every live token of NAME; how many."""
    settings = settings or get_settings()
    url = database_url(settings)
    migrate(url)
    with Session(get_engine(url)) as session:
        return revoke_tokens(session, name=name)
