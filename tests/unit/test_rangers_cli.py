"""`sentinela sites|rangers import|list|oncall` against a moto table made from template.yaml."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinela_tools.cli import main
from tests.conftest import data_table_spec, mocked_aws

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def table(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with mocked_aws(monkeypatch) as ddb:
        ddb.create_table(TableName="data", **data_table_spec())
        yield "data"


def test_import_csv_list_and_oncall(table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sites = tmp_path / "sites.csv"
    sites.write_text("site_id,name,lat,lon,tz,lead\nnorte,Nahuelbuta Norte,-37.79,-72.99,America/Santiago,lia\n")
    rangers = tmp_path / "rangers.csv"
    rangers.write_text("ranger_id,name,phone,lang,sites,shifts,role\n"
                       "ana,Ana Pérez,+56912345678,es,norte,mon-fri 08:00-20:00,primary\n"
                       "lia,Lia Soto,+56987654321,es,norte,mon-sun 20:00-08:00; sat 10:00-12:00,backup\n")
    assert main(["sites", "import", str(sites), "--table", table]) == 0
    assert main(["rangers", "import", str(rangers), "--table", table]) == 0
    out = capsys.readouterr().out
    assert "imported 1 site(s)" in out and "imported 0 site(s) and 2 ranger assignment(s)" in out
    assert main(["rangers", "list", "--table", table]) == 0
    listing = capsys.readouterr().out
    assert "+569*****678" in listing and "12345678" not in listing and "[lead]" in listing
    # 28 Nov 2026 is a Saturday; 14:00Z = 11:00 in Santiago: lia's Saturday shift, not ana's
    assert main(["rangers", "oncall", "--site", "norte", "--at", "2026-11-28T14:00:00Z", "--table", table]) == 0
    oncall = capsys.readouterr().out
    assert "norte at Sat 28/11 11:00 America/Santiago: 1 of 2 on call" in oncall
    assert "ON  lia" in oncall and "off ana" in oncall and "(until Sat 12:00)" in oncall


def test_import_refuses_a_bad_file_whole(table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rangers = tmp_path / "rangers.yaml"
    rangers.write_text("rangers:\n  - {ranger_id: a, phone: '0912', sites: [nowhere]}\n")
    assert main(["rangers", "import", str(rangers), "--table", table]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nothing imported" in err and "not E.164" in err and "nowhere" in err
    assert main(["rangers", "oncall", "--at", "yesterday", "--table", table]) == 2


def test_one_roster_file_with_sites_and_rangers(table: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo roster holds both: `sites import` takes its sites, `rangers import` its rangers."""
    roster = str(REPO / "config" / "demo-roster.yaml")
    assert main(["sites", "import", roster, "--table", table]) == 0
    assert "imported 1 site(s) and 0 ranger assignment(s)" in capsys.readouterr().out
    assert main(["rangers", "import", roster, "--table", table]) == 0
    assert "imported 0 site(s) and 2 ranger assignment(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the legacy `roster import` is gone: argparse names the commands there are
        main(["roster", "import", roster, "--table", table])
    assert main(["sites", "list", "--table", table]) == 0
    assert "nahuelbuta-norte\tNahuelbuta Norte" in capsys.readouterr().out
