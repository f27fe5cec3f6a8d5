"""`solardesk train` as the GUI runs it (a subprocess speaking JSON lines) and `solardesk evaluate`."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from solardesk.cli import _add_plugin_commands, cli
from tests.plugins.test_maskrcnn_data import make_project, write_config

ROOT = Path(__file__).resolve().parents[2]


class Trainer:
    """`solardesk train` in a subprocess; stdout is read by a thread, stderr goes to a file."""

    def __init__(self, config: Path, *args: str) -> None:
        self.err_path = config.with_name(f"stderr-{time.monotonic_ns()}.txt")
        # A file, not a pipe: a pipe nobody reads fills up and blocks the trainer.
        self._err = open(self.err_path, "w")  # noqa: SIM115 - closed in finish()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "solardesk", "train", str(config), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            cwd=ROOT,
            env=dict(os.environ, OMP_NUM_THREADS="2"),
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def events(self, until: str, timeout: float = 300) -> list[dict]:
        """Events (every stdout line must be one JSON object) up to one named ``until``."""
        out: list[dict] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                pytest.fail(f"no '{until}' event within {timeout} s; got {out}")
            if line is None:
                return out
            out.append(json.loads(line))
            if out[-1]["event"] == until:
                return out

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def finish(self, timeout: float = 300) -> tuple[int, list[dict], str]:
        """Close stdin, wait; returns (exit code, remaining events, stderr)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        rc = self.proc.wait(timeout=timeout)
        rest = []
        while (line := self.lines.get(timeout=10)) is not None:
            rest.append(json.loads(line))
        self._err.close()
        return rc, rest, self.err_path.read_text()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("maskrcnn-cli")
    cache, _ = make_project(root)
    return root, cache


@pytest.fixture(scope="module")
def stopped_run(project) -> tuple[Path, list[dict], subprocess.CompletedProcess]:
    """A `solardesk train` subprocess stopped by a "stop" line after its first step."""
    root, cache = project
    folder = root / "stdin"
    folder.mkdir()
    config = write_config(folder, cache, optim={"epochs": 50})
    trainer = Trainer(config)
    events = trainer.events("progress")
    trainer.send("stop\n")
    events += trainer.events("finished")
    rc, rest, err = trainer.finish()
    events += rest
    return config, events, subprocess.CompletedProcess(trainer.proc.args, rc, "", err)


def test_train_emits_json_lines_and_stops_on_stdin(stopped_run) -> None:
    _, events, proc = stopped_run
    assert proc.returncode == 0, proc.stderr
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and "progress" in kinds and kinds[-1] == "finished"
    assert "stop_requested" in kinds and "checkpoint" in kinds
    assert all("time" in e for e in events)
    started = events[0]
    assert started["device"] == "cpu" and started["epochs"] == 50
    finished = events[-1]
    assert finished["reason"] == "stopped" and finished["stopped"] is True
    assert finished["epoch"] < 50
    progress = next(e for e in events if e["event"] == "progress")
    assert {"epoch", "step", "steps_per_epoch", "global_step", "total_steps", "loss"} <= set(
        progress
    )
    last = Path(finished["checkpoint"])
    # a stop mid-epoch saves last.pt; on an epoch's last step the epoch ends first (its
    # checkpoint, which last.pt is too)
    assert last.is_file() and (last.name == "last.pt" or last.name.startswith("epoch-"))
    assert (last.parent / "last.pt").read_bytes() == last.read_bytes()
    assert "training stopped" in proc.stderr


def test_train_resumes_and_stops_on_sigterm(stopped_run) -> None:
    config, events, _ = stopped_run
    stopped_at = events[-1]["global_step"]
    trainer = Trainer(config, "--resume", "--set", "optim.epochs=50")
    got = trainer.events("progress")
    assert got[0]["event"] == "started" and got[0]["start_step"] == stopped_at
    assert got[-1]["global_step"] == stopped_at + 1
    trainer.proc.send_signal(signal.SIGTERM)
    got += trainer.events("finished")
    rc, rest, err = trainer.finish()
    got += rest
    assert rc == 0, err
    assert got[-1]["event"] == "finished" and got[-1]["reason"] == "stopped"
    assert any(e["event"] == "stop_requested" and e["by"] == "SIGTERM" for e in got)


def test_train_bad_config_is_an_error_event_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"cache": "c.sqlite", "optim": {"epoch": 3}}))
    rc, events, err = Trainer(config).finish()
    assert rc == 2
    (event,) = events
    assert event["event"] == "error" and "unknown field 'optim.epoch'" in event["message"]
    assert "unknown field 'optim.epoch'" in err and "Traceback" not in err


def test_plugin_commands_import_no_torch() -> None:
    code = (
        "import sys, solardesk_maskrcnn, solardesk_maskrcnn.cli, solardesk_maskrcnn.config\n"
        "print(','.join(m for m in ('torch', 'torchvision', 'pycocotools') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def invoke(*args: str):
    _add_plugin_commands()
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_evaluate_prints_a_table_and_json(project, stopped_run) -> None:
    _, cache = project
    checkpoint = Path(stopped_run[1][-1]["checkpoint"])
    result = invoke("evaluate", str(checkpoint), "--cache", str(cache), "--split", "all")
    assert result.exit_code == 0, result.output
    for label in ("precision", "recall", "F1", "mask AP", "box AP", "area error"):
        assert label in result.output
    result = invoke(
        "evaluate", str(checkpoint), "--cache", str(cache), "--max-tiles", "2", "--json"
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output[result.output.index("{") :])
    assert figures["images"] == 2 and figures["truth"].startswith("pseudo-labels")
    for k in ("tp", "fp", "fn", "precision", "recall", "f1", "mask_ap", "box_ap50", "area"):
        assert k in figures


@pytest.mark.parametrize("truth", ["vector", "png"])
def test_evaluate_against_ground_truth(project, stopped_run, truth: str) -> None:
    root, _ = project
    checkpoint = Path(stopped_run[1][-1]["checkpoint"])
    raster = root / "scene0.tif"
    if truth == "vector":
        args = ["--truth", str(root / "scene0.geojson")]
    else:
        folder = root / "masks"
        folder.mkdir(exist_ok=True)
        (folder / "scene0.png").write_bytes((root / "scene0.png").read_bytes())
        args = ["--truth", str(folder), "--truth-value", "1"]
    result = invoke("evaluate", str(checkpoint), str(raster), *args, "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output[result.output.index("{") :])
    assert figures["images"] == 4  # 256 px raster, 128 px model tiles
    assert figures["gt_instances"] > 0 and figures["area"]["gt_px"] > 0
    if truth == "vector":
        # A folder stands for its images; the mask PNG beside the raster is not one of them.
        flight = root / "flight"
        flight.mkdir(exist_ok=True)
        for name in ("scene0.tif", "scene0.png"):
            (flight / name).write_bytes((root / name).read_bytes())
        again = invoke("evaluate", str(checkpoint), str(flight), *args, "--json")
        assert again.exit_code == 0, again.output
        assert "without a world file or .aux.xml left out (scene0.png)" in again.output
        assert json.loads(again.output[again.output.index("{") :])["tp"] == figures["tp"]


def test_evaluate_without_truth_or_cache_says_what_to_do(stopped_run, project) -> None:
    root, _ = project
    checkpoint = stopped_run[1][-1]["checkpoint"]
    _add_plugin_commands()  # (alone, no earlier test has added them)
    result = CliRunner().invoke(cli, ["evaluate", checkpoint, str(root / "scene0.tif")])
    assert result.exit_code == 2 and "--truth" in result.output
    # out-of-range numbers are refused, not quietly used (-1 tiles left the last one out)
    for bad in (["--max-tiles", "-1"], ["--threshold", "5"], ["--score-threshold", "2"]):
        result = CliRunner().invoke(cli, ["evaluate", checkpoint, "--cache", "x", *bad])
        assert result.exit_code == 2 and "Invalid value for" in result.output, bad


def test_a_signal_while_an_event_is_written_does_not_deadlock() -> None:
    """The handler only sets flags; the event is written by a watcher thread afterwards."""
    import io

    from solardesk_maskrcnn.events import JsonLines, StopListener

    stream = io.StringIO()
    emit = JsonLines(stream)
    stop = threading.Event()
    with StopListener(
        stop,
        listen_stdin=False,
        on_request=lambda why: emit({"event": "stop_requested", "by": why}),
    ) as listener:
        with emit._lock:  # the main thread is in the middle of writing an event
            listener._signal(signal.SIGTERM, None)
        assert stop.is_set()
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["by"] == "SIGTERM"
