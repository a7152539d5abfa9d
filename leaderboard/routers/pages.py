"""The HTML pages, rendered on the server with Jinja2 (no build step; charts are inline SVG).

/                     tracks overview: hardware, target, current record, runs
/tracks/{name}        the board (rank, submission, submitter, time mean ± std, the track's metric, p, n,
                      energy, cost, MFU on GPU tracks, date, status; on a budget track the metric mean ± std
                      leads and there is no time), each row's links to its runs' curves and to a comparison
                      with the record, and the record progression chart
/runs/{run_id}        loss curve, telemetry (power, utilization, memory: the charts the run's hardware has
                      data for), checks, config, provenance, its owner and when it was uploaded, and the
                      bundle's files (links for everyone once it is verified), its queue position,
                      and its reproduction: status, progress, the claim and the re-run side by side
/submissions/{id}     a submission and its runs, with a link to its runs' curves on each track
/compare?...          runs or submissions side by side: curves, bars, verdicts (leaderboard/compare.py)
Every page is built from what the database holds (a run's charts from its stored summary, never from
its events or telemetry files) and served through leaderboard/pagecache.py with an ETag. A page's error is
an HTTPException; a browser gets it as a one-line page (http_error), any other client as JSON.
"""

import json
import math
from datetime import UTC
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy import func
from sqlmodel import select
from starlette.exceptions import HTTPException as StarletteHTTPException

from leaderboard import crud, ranking, reproduction
from leaderboard.charts import Series, bar_chart, line_chart
from leaderboard.compare import MAX_COMPARED, comparison, parse_ids
from leaderboard.deps import SettingsDep, open_session
from leaderboard.models import RecordEntry, Run, Submission, TrackRow
from leaderboard.pagecache import cached_response
from leaderboard.routers.runs import run_or_404
from leaderboard.routers.tracks import track_or_404
from protocol.tracks import Target

HTML = "text/html; charset=utf-8"

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).resolve().parents[1] / "templates")


def _num(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _pm(mean, std, digits: int = 2) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _when(v) -> str:
    return v.strftime("%Y-%m-%d %H:%M") if v is not None else "–"


def _date(v) -> Markup:
    """The day in a table cell (it never wraps), the full time on hover and in the datetime attribute."""
    if v is None:
        return Markup("–")
    v = v if v.tzinfo else v.replace(tzinfo=UTC)  # SQLite gives naive datetimes; they were written as UTC
    iso = v.isoformat(timespec="seconds")
    return Markup(f'<time datetime="{iso}" title="{v:%Y-%m-%d %H:%M} UTC">{v:%Y-%m-%d}</time>')


def _p(v) -> str:
    return "–" if v is None else ("0" if v == 0 else f"{v:.2g}")


templates.env.filters.update(num=_num, pm=_pm, date=_date, when=_when, pvalue=_p)
templates.env.filters["json"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)


def render(template: str, **context) -> str:
    """A page as a string (the templates need no request), so a cached page is served as it is."""
    return templates.get_template(template).render(**context)


async def http_error(request: Request, exc: StarletteHTTPException):
    """A page's error as a one-line HTML page for a browser; the API's, and any client's that does not ask for
    HTML, as FastAPI's JSON {"detail": ...}."""
    api = request.url.path.startswith(("/api/", "/v1/"))
    if api or "text/html" not in request.headers.get("accept", "") or not isinstance(exc.detail, str):
        return await http_exception_handler(request, exc)
    page = render("error.html", status=exc.status_code, detail=exc.detail)
    return HTMLResponse(page, status_code=exc.status_code, headers=exc.headers)


def target_text(track: TrackRow) -> str:
    """The target in words (protocol.tracks.Target.describe): "target not set" where a provisional track has none."""
    budget_s = ((track.spec or {}).get("target") or {}).get("budget_s")
    return Target(track.metric, track.higher_is_better, track.threshold, budget_s=budget_s).describe()


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, settings: SettingsDep):
    def build() -> str:
        with open_session(request) as session:
            runs = dict(session.exec(select(Run.track_id, func.count()).group_by(Run.track_id)).all())
            rows = []
            for track in session.exec(select(TrackRow).order_by(TrackRow.name)).all():
                record = session.exec(
                    select(RecordEntry, Submission.name)
                    .join(Submission, Submission.id == RecordEntry.submission_id)
                    .where(RecordEntry.track_id == track.id)
                    .order_by(RecordEntry.id.desc())
                ).first()
                rows.append(
                    {
                        "track": crud.track_public(track),
                        "target": target_text(track),
                        "budget": ranking.is_budget(track),
                        "runs": runs.get(track.id, 0),
                        "record": record,
                    }
                )
            return render("index.html", rows=rows)

    return await cached_response(request, settings.cache_ttl_s, build, HTML)


def division_board(session, track, division: str) -> dict:
    """One division's ranking, records and record progression chart, as track.html shows them."""
    records = ranking.record_history(session, track=track, division=division)
    if ranking.is_budget(track):  # the best metric in the budget, not a time
        points = [(r.set_at.timestamp(), r.metric_mean) for r in records]
        label, y_label = f"record (mean {track.metric})", track.metric
    else:
        points = [(r.set_at.timestamp(), r.time_mean_s) for r in records]
        label, y_label = "record (mean timed s)", "timed seconds"
    chart = line_chart(
        [Series(label, points)],
        title=f"{track.name}: record progression, {division} division",
        x_label="date",
        y_label=y_label,
        step=True,
        x_is_time=True,
    )
    return {
        "name": division,
        "suffix": "" if division == "closed" else f"-{division}",  # the closed board keeps the plain ids
        "board": ranking.leaderboard(session, track=track, division=division),
        "records": records,
        "holder": records[-1].submission_id if records else None,
        "chart": chart,
    }


@router.get("/tracks/{name}", response_class=HTMLResponse)
async def track_page(name: str, request: Request, settings: SettingsDep):
    def build() -> str:
        with open_session(request) as session:
            track = track_or_404(session, name)
            divisions = [division_board(session, track, d) for d in ranking.divisions(track)]  # closed first
            recent, _ = crud.list_runs(session, track=track, limit=20)
            return render(
                "track.html",
                track=crud.track_public(track),
                target=target_text(track),
                budget=ranking.is_budget(track),
                divisions=divisions,
                recent=recent,
                max_compared=MAX_COMPARED,
            )

    return await cached_response(request, settings.cache_ttl_s, build, HTML)


def loss_chart(summary: dict) -> Markup:
    steps, val = summary.get("loss") or [], summary.get("val") or []
    charts = [
        line_chart(
            [Series("loss", [(s, loss) for s, loss, _ in steps]), Series("smoothed", [(s, sm) for s, _, sm in steps])],
            title="training loss",
            x_label="step",
            y_label="nats",
        )
    ]
    if val:
        charts.append(
            line_chart(
                [Series("val bpb", [(step, bpb) for step, bpb in val])],
                title="val bpb",
                x_label="step",
                y_label="bits per byte",
            )
        )
    return Markup("".join(charts))


def telemetry_charts(summary: dict) -> Markup:
    """Power, utilization and memory over time, as leaderboard/summary.py drew them from the samples: GPU charts
    where the samples had GPUs, CPU ones otherwise, and only those with data (no RAPL, no power chart)."""
    return Markup("").join(
        line_chart(
            [Series(label, [tuple(p) for p in points])],
            title=label,
            x_label="seconds",
            y_label=label.split(" (")[1].rstrip(")"),
            height=200,
        )
        for label, points in (summary.get("telemetry") or {}).items()
        if points
    )


def ran_on_gpus(record: dict) -> bool:
    """Whether the run's environment had GPUs: MFU is shown only then (on a CPU it reads 0, against no peak)."""
    environment = (record.get("provenance") or {}).get("environment") or {}
    return bool(environment.get("gpus"))


def reproduction_chart(evidence: dict | None) -> Markup:
    """The claimed and the reproduced training loss, step by step, on one chart."""
    pairs = ((evidence or {}).get("losses") or {}).get("pairs") or []
    if not pairs:
        return Markup("")
    return line_chart(
        [Series("claimed", [(s, a) for s, a, _ in pairs]), Series("reproduced", [(s, b) for s, _, b in pairs])],
        title="training loss: claimed and reproduced",
        x_label="step",
        y_label="nats",
    )


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run_page(run_id: str, request: Request, settings: SettingsDep):
    def build() -> str:
        with open_session(request) as session:
            run = run_or_404(session, run_id)
            detail = crud.run_detail(session, run=run)
            track = session.get(TrackRow, run.track_id)
            summary = run.summary or {}
            job, rule = crud.reproduction_of(session, run=run), reproduction.rule_of(track)
            live = crud.reproduction_public(job, reproduction.queue_position(session, job=job) if job else None)
            return render(
                "run.html",
                run=detail,
                track=crud.track_public(track),
                target=target_text(track),
                gpus=ran_on_gpus(detail.record),
                loss_chart=loss_chart(summary),
                telemetry_charts=telemetry_charts(summary),
                reproduction=live,
                reproduces=rule is not None,
                unavailable=reproduction.local_unavailable(settings) if rule and rule.by == "server" else None,
                reproduction_chart=reproduction_chart(live.evidence if live else None),
                verification_queue=reproduction.queue_position(session, job=crud.verification_of(session, run=run)),
            )

    return await cached_response(request, settings.cache_ttl_s, build, HTML)


@router.get("/submissions/{submission_id}", response_class=HTMLResponse)
async def submission_page(submission_id: int, request: Request, settings: SettingsDep):
    def build() -> str:
        with open_session(request) as session:
            submission = session.get(Submission, submission_id) if 0 <= submission_id < 2**31 else None
            if submission is None:
                raise HTTPException(404, detail=f"no submission {submission_id}")
            runs, _ = crud.list_runs(session, submission_id=submission_id, limit=100)
            return render(
                "submission.html", submission=crud.submission_public(session, submission=submission), runs=runs
            )

    return await cached_response(request, settings.cache_ttl_s, build, HTML)


@router.get("/compare", response_class=HTMLResponse)
async def compare_page(request: Request, settings: SettingsDep):
    query = request.query_params
    run_ids, submission_ids = parse_ids(query.getlist("runs")), parse_ids(query.getlist("submissions"))

    def build() -> str:
        with open_session(request) as session:
            try:
                c = comparison(session, run_ids=run_ids, submission_ids=submission_ids, track_name=query.get("track"))
            except ValueError as e:
                raise HTTPException(422, detail=str(e)) from None
            budget = ranking.is_budget(c.track)
            curves = [
                line_chart(c.loss, title="training loss (smoothed)", x_label="step", y_label="nats"),
                line_chart(c.val, title="val bpb", x_label="step", y_label="bits per byte"),
            ]
            bars = bar_chart(
                c.bars,
                title=f"mean {c.track.metric} ± std" if budget else "timed seconds, mean ± std",
                y_label=c.track.metric if budget else "seconds",
            )
            return render(
                "compare.html",
                c=c,
                track=crud.track_public(c.track),
                target=target_text(c.track),
                budget=budget,
                curves=Markup("".join(curves)),
                bars=bars,
            )

    return await cached_response(request, settings.cache_ttl_s, build, HTML)
