"""FastAPI dependencies: the settings, a database session per request, and who is calling (bearer token)."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from leaderboard.models import Submitter
from leaderboard.settings import Settings
from leaderboard.tokens import submitter_for_token

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


def get_current_submitter(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Submitter:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="no API token: send `Authorization: Bearer <token>` (an admin makes one: `speedrun token create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    submitter = submitter_for_token(session, token=credentials.credentials)
    if submitter is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="unknown or revoked API token: ask an admin for a new one",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return submitter


CurrentSubmitter = Annotated[Submitter, Depends(get_current_submitter)]


def get_current_admin(submitter: CurrentSubmitter) -> Submitter:
    if not submitter.is_admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"{submitter.name} is not an admin: this route is for admins"
        )
    return submitter


CurrentAdmin = Annotated[Submitter, Depends(get_current_admin)]
