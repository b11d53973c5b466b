"""The CLI's promises: one `error:` line and exit 2 for AWS, network and input failures (never a
traceback); --json always prints one JSON document to stdout; rangers remove and import --sync;
devices with coordinates; the recorder-only install runs `sentinela upload` without the heavy packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sentinela_tools import cli
from sentinela_tools.cli import main
from tests.unit.test_rangers_cli import table  # noqa: F401  (the moto table fixture)

REPO = Path(__file__).resolve().parents[2]

ROSTER = """sites:
  - {site_id: norte, name: Nahuelbuta Norte, lat: -37.79, lon: -72.99, tz: America/Santiago, lead: ana}
  - {site_id: sur, name: Nahuelbuta Sur, lat: -37.9, lon: -73.0, tz: America/Santiago}
rangers:
  - {ranger_id: ana, name: Ana, phone: "+56912345678", lang: es, sites: [norte]}
  - {ranger_id: bob, name: Bob, phone: "+15005550100", lang: en, sites: [norte, sur]}
"""


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_unknown_stack_is_one_line_exit_2(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # No region and no credentials: what a fresh machine has; botocore fails before any network call.
    for var in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    for argv in (["sites", "list", "--stack", "nosuch"], ["rangers", "oncall", "--stack", "nosuch"],
                 ["devices", "list", "--stack", "nosuch"],
                 ["sites", "import", str(REPO / "config" / "demo-roster.yaml"), "--stack", "nosuch"]):
        assert main(argv) == 2
        assert one_error_line(capsys.readouterr().err).startswith("error: AWS: ")


def test_input_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["devices", "list"]) == 2
    assert one_error_line(capsys.readouterr().err) == "error: give --table NAME or --stack NAME"
    assert main(["upload", str(tmp_path / "missing"), "--endpoint", "http://127.0.0.1:9/uploads", "--site", "s",
                 "--device", "d", "--secret-file", str(tmp_path / "nope")]) == 2
    one_error_line(capsys.readouterr().err)


def test_json_goes_to_stdout_alone(table: str, tmp_path: Path,  # noqa: F811
                                   capsys: pytest.CaptureFixture[str]) -> None:
    roster = tmp_path / "roster.yaml"
    roster.write_text(ROSTER)
    assert main(["sites", "import", str(roster), "--table", table, "--json"]) == 0
    got = capsys.readouterr()
    assert json.loads(got.out) == {"table": table, "sites": 2, "ranger_assignments": 0, "removed": []}
    assert "imported" in got.err  # the human line, out of the JSON's way
    assert main(["rangers", "import", str(roster), "--table", table, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ranger_assignments"] == 3
    for argv in (["sites", "list"], ["rangers", "list"], ["rangers", "oncall", "--at", "2026-11-28T14:00:00Z"],
                 ["devices", "list"]):
        assert main([*argv, "--table", table, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert isinstance(data, list)
    assert main(["rangers", "list", "--table", table, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {(r["site"], r["ranger_id"]) for r in listed} == {("norte", "ana"), ("norte", "bob"), ("sur", "bob")}
    assert all("*" in r["phone"] for r in listed)  # masked, as in the text listing


def test_rangers_remove_and_sync(table: str, tmp_path: Path,  # noqa: F811
                                 capsys: pytest.CaptureFixture[str]) -> None:
    roster = tmp_path / "roster.yaml"
    roster.write_text(ROSTER)
    assert main(["sites", "import", str(roster), "--table", table]) == 0
    assert main(["rangers", "import", str(roster), "--table", table]) == 0
    capsys.readouterr()
    assert main(["rangers", "remove", "bob", "--site", "sur", "--table", table, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == ["sur/bob"]
    assert main(["rangers", "remove", "bob", "--site", "sur", "--table", table]) == 2
    one_error_line(capsys.readouterr().err)
    # --sync: the file is the whole roster of the sites it names (norte); sur is left alone.
    only_ana = tmp_path / "rangers.csv"
    only_ana.write_text("ranger_id,name,phone,lang,sites\nana,Ana,+56912345678,es,norte\n")
    assert main(["rangers", "import", str(only_ana), "--sync", "--table", table, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == ["norte/bob"]
    assert main(["rangers", "list", "--table", table, "--json"]) == 0
    assert [(r["site"], r["ranger_id"]) for r in json.loads(capsys.readouterr().out)] == [("norte", "ana")]


def test_devices_with_coordinates(table: str, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    assert main(["devices", "add", "norte", "rec-07", "--lat", "-37.801234", "--lon", "-72.954321",
                 "--table", table, "--json"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["secret"] and added["lat"] == -37.801234
    assert main(["devices", "add", "norte", "rec-08", "--lat", "-37.8", "--table", table]) == 2
    assert "both --lat and --lon" in one_error_line(capsys.readouterr().err)
    assert main(["devices", "locate", "norte", "rec-07", "--lat", "-37.9", "--lon", "-72.9", "--table", table]) == 0
    capsys.readouterr()
    assert main(["devices", "list", "--table", table, "--json"]) == 0
    (dev,) = json.loads(capsys.readouterr().out)
    assert (dev["device_id"], dev["lat"], dev["lon"]) == ("rec-07", -37.9, -72.9)
    assert main(["devices", "locate", "norte", "nosuch", "--lat", "1", "--lon", "1", "--table", table]) == 2
    one_error_line(capsys.readouterr().err)


def test_demo_defaults_to_the_pack_without_shared(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cli, "DEFAULT_AUDIO", tmp_path / "absent")
    assert cli.default_demo_audio() == cli.DEMO_PACK
    monkeypatch.setattr(cli, "DEFAULT_AUDIO", tmp_path)
    assert cli.default_demo_audio() == tmp_path


BLOCK = """
import sys, importlib.abc
HEAVY = {"onnxruntime", "twilio", "boto3", "botocore", "yaml", "soxr", "aws_lambda_powertools", "moto",
         "sklearn", "matplotlib", "tqdm", "onnx"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
from sentinela_tools.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_recorder_only_install_runs_upload(tmp_path: Path) -> None:
    """What requirements/recorder.txt installs (soundfile and numpy): `sentinela upload` works, the
    commands that need more say so in one line."""
    folder = tmp_path / "recordings"
    folder.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    run = [sys.executable, "-c", BLOCK]
    up = subprocess.run([*run, "upload", str(folder), "--endpoint", "http://127.0.0.1:9/uploads", "--site", "s",
                         "--device", "d", "--secret-file", str(secret), "--json"],
                        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["sent"] == 0
    other = subprocess.run([*run, "sites", "list", "--table", "x"], capture_output=True, text=True, cwd=REPO,
                           timeout=120)
    assert other.returncode == 2
    assert one_error_line(other.stderr).startswith("error: `sentinela sites` needs ")
    # Installed without the checkout (no models/card.json): upload still works; what needs the card says so.
    env = {**os.environ, "MODEL_CARD": str(tmp_path / "no-card.json")}
    up = subprocess.run([*run, "upload", str(folder), "--endpoint", "http://127.0.0.1:9/uploads", "--site", "s",
                         "--device", "d", "--secret-file", str(secret), "--json"],
                        capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert up.returncode == 0, up.stderr
    labels = subprocess.run([*run, "labels", "export", "--table", "x", "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert labels.returncode == 2 and "needs the model card" in one_error_line(labels.stderr)
