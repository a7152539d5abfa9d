"""FastAPI dependencies: the settings, a database session per request, and who is calling (bearer token).

A request's token row is kept on `request.state.token` (the revoke route retires it); every 401 is
counted per client address by the rate limiter (leaderboard/limits.py), so guessing tokens stops early.
"""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from leaderboard.models import Submitter
from leaderboard.settings import Settings
from leaderboard.tokens import lookup

bearer = HTTPBearer(auto_error=False, description="an API token from `speedrun token create NAME`")


async def get_settings_dep(request: Request) -> Settings:  # async: no thread-pool hop for a cached read
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine) as session:
        yield session


def open_session(request: Request) -> Session:
    """A session for code that runs only on a cache miss (close it: `with open_session(request) as s`)."""
    return Session(request.app.state.engine)


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _submitter(request: Request, session: Session, credentials: HTTPAuthorizationCredentials) -> Submitter:
    found = lookup(session, token=credentials.credentials) if len(credentials.credentials) <= 200 else None
    if found is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="unknown, expired or revoked API token: ask an admin for a new one (`speedrun token create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    submitter, request.state.token = found
    return submitter


def get_current_submitter(request: Request, session: SessionDep, credentials: Credentials) -> Submitter:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="no API token: send `Authorization: Bearer <token>` (an admin makes one: `speedrun token create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return _submitter(request, session, credentials)


def get_optional_submitter(request: Request, session: SessionDep, credentials: Credentials) -> Submitter | None:
    """Who is calling, or None without a token (a wrong token is still a 401)."""
    return None if credentials is None else _submitter(request, session, credentials)


CurrentSubmitter = Annotated[Submitter, Depends(get_current_submitter)]
OptionalSubmitter = Annotated[Submitter | None, Depends(get_optional_submitter)]


def get_current_admin(submitter: CurrentSubmitter) -> Submitter:
    if not submitter.is_admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"{submitter.name} is not an admin: this route is for admins"
        )
    return submitter


CurrentAdmin = Annotated[Submitter, Depends(get_current_admin)]
