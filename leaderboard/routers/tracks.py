"""/api/tracks: the tracks, each track's leaderboard and its record progression (one division each: ?division=)."""

from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import TypeAdapter

from leaderboard import crud, ranking
from leaderboard.deps import SessionDep, SettingsDep, open_session
from leaderboard.models import RecordPublic, StandingPublic, TrackPublic, TrackRow
from leaderboard.pagecache import cached_response

router = APIRouter(prefix="/api/tracks", tags=["tracks"])
NOT_FOUND = {404: {"description": "No such track"}}
BOARD, RECORDS = TypeAdapter(list[StandingPublic]), TypeAdapter(list[RecordPublic])


Division = Query(
    "closed", description="closed (the default) or open: each division is ranked on its own (submissions/contract.py)"
)


def ranked_division(track: TrackRow, division: str) -> str:
    if division not in ranking.divisions(track):
        raise HTTPException(
            404, detail=f"track {track.name} ranks the {' and '.join(ranking.divisions(track))} division only"
        )
    return division


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
async def read_leaderboard(
    name: str, request: Request, settings: SettingsDep, division: Literal["closed", "open"] = Division
) -> Response:
    def build() -> bytes:
        with open_session(request) as session:
            track = track_or_404(session, name)
            return BOARD.dump_json(ranking.leaderboard(session, track=track, division=ranked_division(track, division)))

    # Cached as bytes with an ETag: a hit touches neither the database nor pydantic.
    return await cached_response(request, settings.cache_ttl_s, build, "application/json")


@router.get(
    "/{name}/records",
    summary="A track's record progression, oldest first",
    response_model=list[RecordPublic],
    responses=NOT_FOUND,
)
async def read_records(
    name: str, request: Request, settings: SettingsDep, division: Literal["closed", "open"] = Division
) -> Response:
    def build() -> bytes:
        with open_session(request) as session:
            track = track_or_404(session, name)
            history = ranking.record_history(session, track=track, division=ranked_division(track, division))
            return RECORDS.dump_json(history)

    return await cached_response(request, settings.cache_ttl_s, build, "application/json")
