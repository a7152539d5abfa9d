"""/api/tracks: the tracks, each track's leaderboard and its record progression."""

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import TypeAdapter

from leaderboard import crud, ranking
from leaderboard.deps import SessionDep, SettingsDep, open_session
from leaderboard.models import RecordPublic, StandingPublic, TrackPublic, TrackRow
from leaderboard.pagecache import cached_response

router = APIRouter(prefix="/api/tracks", tags=["tracks"])
NOT_FOUND = {404: {"description": "No such track"}}
BOARD, RECORDS = TypeAdapter(list[StandingPublic]), TypeAdapter(list[RecordPublic])


def track_or_404(session, name: str) -> TrackRow:
    track = crud.get_track(session, name=name) if len(name) <= 100 else None
    if track is None:
        known = ", ".join(t.name for t in crud.list_tracks_public(session))
        raise HTTPException(404, detail=f"no track {name[:100]!r}: the server has {known}")
    return track


@router.get("", summary="All tracks")
def read_tracks(session: SessionDep) -> list[TrackPublic]:
    return crud.list_tracks_public(session)


@router.get("/{name}", summary="One track", responses=NOT_FOUND)
def read_track(name: str, session: SessionDep) -> TrackPublic:
    return crud.track_public(track_or_404(session, name))


@router.get(
    "/{name}/leaderboard",
    summary="A track's leaderboard: ranked submissions first",
    response_model=list[StandingPublic],
    responses=NOT_FOUND,
)
async def read_leaderboard(name: str, request: Request, settings: SettingsDep) -> Response:
    def build() -> bytes:
        with open_session(request) as session:
            return BOARD.dump_json(ranking.leaderboard(session, track=track_or_404(session, name)))

    # Cached as bytes with an ETag: a hit touches neither the database nor pydantic.
    return await cached_response(request, settings.cache_ttl_s, build, "application/json")


@router.get(
    "/{name}/records",
    summary="A track's record progression, oldest first",
    response_model=list[RecordPublic],
    responses=NOT_FOUND,
)
async def read_records(name: str, request: Request, settings: SettingsDep) -> Response:
    def build() -> bytes:
        with open_session(request) as session:
            return RECORDS.dump_json(ranking.record_history(session, track=track_or_404(session, name)))

    return await cached_response(request, settings.cache_ttl_s, build, "application/json")
