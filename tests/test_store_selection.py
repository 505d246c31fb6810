"""Which store a command opens: ``--store`` > ``$STORYLOOM_STORE`` > ``store:`` in the
settings > ``sqlite`` in the state folder; URL errors; read-only commands create nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from storyloom.cli import main
from storyloom.config import Options, make_config
from storyloom.settings import Settings
from storyloom.store import StoreNotFound, mask_url, open_store_url, url_scheme

JOB = "job_id: where\njob_type: qc_processing\nitems:\n  - {item_id: a}\n  - {item_id: b}\n"


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("STORYLOOM_HOME", "STORYLOOM_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STORYLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")
    (tmp_path / "job.yaml").write_text(JOB)
    return tmp_path


def stored_jobs(url: str) -> list[str] | None:
    """The job ids in the store ``url`` names, through the registry; None if there is none."""
    async def read():
        config = make_config(Options(autoload=False), start_dir=Path.cwd())
        try:
            store = await open_store_url(url, stores=config.registries.stores, state_dir=config.state_dir,
                                         settings=Settings(), create=False)
        except StoreNotFound:
            return None
        try:
            return [row.job_id for row in await store.list_jobs()]
        finally:
            await store.aclose()

    return trio.run(read)


def test_store_flag_with_an_absolute_url_puts_the_store_there(folder, capsys):
    target = folder / "elsewhere" / "state"
    assert main(["submit", "job.yaml", "--store", f"sqlite://{target}"]) == 0
    assert stored_jobs(f"sqlite://{target}") == ["where"]
    assert (target / "storyloom.db").is_file()
    assert not (folder / ".storyloom").exists()  # not the default place
    capsys.readouterr()
    assert main(["status", "--store", f"sqlite:{target}"]) == 0  # sqlite:/abs is the same folder
    assert "where  qc_processing  pending  2 pending" in capsys.readouterr().out


def test_the_environment_names_the_store(folder, monkeypatch, capsys):
    monkeypatch.setenv("STORYLOOM_STORE", "sqlite:from-env")
    assert main(["submit", "job.yaml"]) == 0
    assert stored_jobs("sqlite:from-env") == ["where"]
    assert not (folder / ".storyloom").exists()
    assert main(["work", "--burst", "-q"]) == 0
    assert "where: completed" in capsys.readouterr().out


def test_flag_beats_environment_beats_settings_beats_the_default(folder, monkeypatch):
    (folder / "storyloom.yaml").write_text("store: sqlite:from-settings\n")
    monkeypatch.setenv("STORYLOOM_STORE", "sqlite:from-env")

    def submit(job_id: str, *flags: str) -> None:
        (folder / f"{job_id}.yaml").write_text(JOB.replace("where", job_id))
        assert main(["submit", f"{job_id}.yaml", *flags]) == 0

    submit("flagged", "--store", "sqlite:from-flag", "--state-dir", "ignored")
    submit("env")
    monkeypatch.delenv("STORYLOOM_STORE")
    submit("settings")
    (folder / "storyloom.yaml").write_text("grace_period: 1s\n")
    submit("default")
    submit("state-dir", "--state-dir", "chosen-dir")
    assert stored_jobs("sqlite:from-flag") == ["flagged"]
    assert stored_jobs("sqlite:from-env") == ["env"]
    assert stored_jobs("sqlite:from-settings") == ["settings"]
    assert stored_jobs("sqlite:.storyloom") == ["default"]
    assert stored_jobs("sqlite:chosen-dir") == ["state-dir"]
    assert not (folder / "ignored").exists()


def test_an_unknown_scheme_lists_the_registered_ones_and_masks_the_password(folder, capsys):
    assert main(["status", "--store", "mysql://loom:s3cr3t-pw@db.example:3306/studio"]) == 2
    err = capsys.readouterr().err
    assert "unknown store scheme 'mysql'" in err and "(registered: postgres, postgresql, sqlite)" in err
    assert "mysql://loom:***@db.example:3306/studio" in err
    assert "s3cr3t-pw" not in err


@pytest.mark.parametrize("url,message", [
    ("/abs/folder", "is not a URL"),
    ("", "is not a URL"),
    ("sqlite://somehost/x", "names a host"),
    ("sqlite:///x?mode=ro", "takes no query"),
])
def test_a_malformed_url_is_a_clear_usage_error(folder, capsys, url, message):
    assert main(["submit", "job.yaml", "--store", url]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_mask_url():
    assert mask_url("postgresql://user:pass@host/db") == "postgresql://user:***@host/db"
    assert mask_url("postgresql://host/db?user=u&password=pw") == "postgresql://host/db?user=u&password=***"
    assert mask_url("postgresql://user@host/db") == "postgresql://user@host/db"
    assert mask_url("sqlite:///a/b") == "sqlite:///a/b"
    assert url_scheme("SQLite:x") == "sqlite"


@pytest.mark.parametrize("command", [
    ["status"], ["status", "where"], ["queue"], ["queue", "position", "a"], ["report", "where"],
    ["pause", "where"], ["cancel", "where"], ["resume", "where", "--detach"],
])
def test_read_only_commands_create_no_store(folder, capsys, command):
    target = folder / "nothing-here"
    assert main([*command, "--store", f"sqlite://{target}"]) == 2
    err = capsys.readouterr().err
    assert "no store in" in err or "no job 'where'" in err, err
    assert not target.exists()
    assert main(command) == 2  # the default place too
    assert not (folder / ".storyloom").exists()


def test_plugins_lists_the_store_backends(folder, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "stores: postgres [postgresql], postgresql [postgresql], sqlite [sqlite]" in out.splitlines()
    assert "    loom_register_stores" in out


def test_the_sqlite_backend_cannot_be_blocked(folder, capsys):
    assert main(["status", "-p", "no:sqlite"]) == 2
    assert "essential" in capsys.readouterr().err


def test_mask_url_of_an_unparseable_url_shows_nothing_before_the_last_at_or_after_the_query():
    masked = mask_url("redis://u:p@ss@[::1/x")
    assert "ss@" not in masked and "p@" not in masked, masked
    masked = mask_url("redis://u@[::1/x?password=zz")
    assert "zz" not in masked, masked


@pytest.mark.parametrize("key", ["api_key", "apikey", "access_key", "sslpassword", "auth", "API_KEY", "Secret_X"])
def test_mask_url_masks_every_query_key_that_names_a_secret(key):
    masked = mask_url(f"postgresql://host/db?user=u&{key}=zz")
    assert "zz" not in masked and "user=u" in masked, masked
