"""The HTML pages, rendered on the server with Jinja2 (no build step; charts are inline SVG).

/                     tracks overview: hardware, target, current record, runs
/tracks/{name}        the board (rank, submission, submitter, time mean ± std (n), metric, val bpb,
                      p-value, energy, cost, MFU, date, verified) and the record progression chart
/runs/{run_id}        loss curve, telemetry (power, utilization, memory), checks, config,
                      provenance and the bundle's files to download
/submissions/{id}     a submission and its runs
"""

import json
import math
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy import func
from sqlmodel import select

from leaderboard import crud, ranking
from leaderboard.charts import Series, line_chart
from leaderboard.deps import SessionDep, SettingsDep, open_session
from leaderboard.models import RecordEntry, Run, Submission, TrackRow
from leaderboard.routers.runs import run_or_404
from leaderboard.routers.tracks import track_or_404
from leaderboard.uploads import read_jsonl

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


def _date(v) -> str:
    return v.strftime("%Y-%m-%d %H:%M") if v is not None else "–"


def _p(v) -> str:
    return "–" if v is None else ("0" if v == 0 else f"{v:.2g}")


templates.env.filters.update(num=_num, pm=_pm, date=_date, pvalue=_p)
templates.env.filters["json"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)


def render(template: str, **context) -> str:
    """A page as a string (the templates need no request), so a cached page is served as it is."""
    return templates.get_template(template).render(**context)


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
                rows.append({"track": crud.track_public(track), "runs": runs.get(track.id, 0), "record": record})
            return render("index.html", rows=rows)

    return HTMLResponse(await ranking.READS.get_async(("index",), settings.cache_ttl_s, build))


@router.get("/tracks/{name}", response_class=HTMLResponse)
async def track_page(name: str, request: Request, settings: SettingsDep):
    def build() -> str:
        with open_session(request) as session:
            track = track_or_404(session, name)
            board = ranking.leaderboard(session, track=track)
            records = ranking.record_history(session, track=track)
            points = [(r.set_at.timestamp(), r.time_mean_s) for r in records]
            chart = line_chart(
                [Series("record (mean timed s)", points)],
                title=f"{track.name}: record progression",
                x_label="date",
                y_label="timed seconds",
                step=True,
                x_is_time=True,
            )
            recent = crud.list_runs(session, track=track, limit=20)
            return render(
                "track.html", track=crud.track_public(track), board=board, records=records, chart=chart, recent=recent
            )

    return HTMLResponse(await ranking.READS.get_async(("track_page", name), settings.cache_ttl_s, build))


def loss_chart(events: list[dict]) -> Markup:
    steps = [e for e in events if e.get("event") == "step"]
    val = [e for e in events if e.get("event") == "val" and e.get("val_bpb") is not None]
    charts = [
        line_chart(
            [
                Series("loss", [(e["step"], e.get("loss")) for e in steps]),
                Series("smoothed", [(e["step"], e.get("smooth_loss")) for e in steps]),
            ],
            title="training loss",
            x_label="step",
            y_label="nats",
        )
    ]
    if val:
        charts.append(
            line_chart(
                [Series("val bpb", [(e["step"], e["val_bpb"]) for e in val])],
                title="val bpb",
                x_label="step",
                y_label="bits per byte",
            )
        )
    return Markup("".join(charts))


def telemetry_charts(samples: list[dict]) -> Markup:
    """Power, utilization and memory over time: GPUs (summed / averaged) from NVML, else the CPU side."""
    rows = [s for s in samples if s.get("kind") == "sample" and isinstance(s.get("t"), int | float)]
    gpu = any(s.get("gpus") for s in rows)

    def total(s, key):
        vals = [g.get(key) for g in s.get("gpus") or [] if g.get(key) is not None]
        return sum(vals) if vals else None

    if gpu:
        power = [(s["t"], total(s, "power_w")) for s in rows]
        util = [(s["t"], (total(s, "utilization_pct") or 0) / max(len(s.get("gpus") or []), 1)) for s in rows]
        memory = [(s["t"], (total(s, "memory_used_bytes") or 0) / 2**30) for s in rows]
        labels = ("GPU power (sum, W)", "GPU utilization (mean, %)", "GPU memory (sum, GiB)")
    else:
        energy = [(s["t"], (s.get("cpu") or {}).get("rapl_energy_j")) for s in rows]
        energy = [(t, e) for t, e in energy if e is not None]
        power = [(tb, (eb - ea) / (tb - ta)) for (ta, ea), (tb, eb) in zip(energy, energy[1:], strict=False) if tb > ta]
        util = [(s["t"], (s.get("cpu") or {}).get("cpu_percent")) for s in rows]
        memory = [(s["t"], ((s.get("cpu") or {}).get("rss_bytes") or 0) / 2**30) for s in rows]
        labels = ("CPU package power (RAPL, W)", "CPU utilization (%)", "process memory (RSS, GiB)")
    return Markup("").join(
        line_chart(
            [Series(label, pts)], title=label, x_label="seconds", y_label=label.split(" (")[1].rstrip(")"), height=200
        )
        for label, pts in zip(labels, (power, util, memory), strict=True)
    )


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(run_id: str, request: Request, session: SessionDep, settings: SettingsDep):
    detail = crud.run_detail(session, run=run_or_404(session, run_id))
    bundle_dir = settings.storage_dir / "bundles" / detail.bundle_sha256
    context = {
        "run": detail,
        "loss_chart": loss_chart(read_jsonl(bundle_dir / "events.jsonl")),
        "telemetry_charts": telemetry_charts(read_jsonl(bundle_dir / "telemetry.jsonl")),
    }
    return templates.TemplateResponse(request, "run.html", context)


@router.get("/submissions/{submission_id}", response_class=HTMLResponse)
def submission_page(submission_id: int, request: Request, session: SessionDep):
    submission = session.get(Submission, submission_id) if 0 <= submission_id < 2**31 else None
    if submission is None:
        raise HTTPException(404, detail=f"no submission {submission_id}")
    context = {
        "submission": crud.submission_public(session, submission=submission),
        "runs": crud.list_runs(session, submission_id=submission_id, limit=500),
    }
    return templates.TemplateResponse(request, "submission.html", context)
