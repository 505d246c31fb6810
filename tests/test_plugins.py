"""Plugin loading: bundled, entry points, -p, -p no:, the autoload switch, plugins:."""

from __future__ import annotations

import json
import os
import re
import site as sitemodule
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from storyloom.errors import UsageError
from storyloom.pluginmanager import DEFAULT_PLUGINS, ESSENTIAL_PLUGINS, make_plugin_manager

ROOT = Path(__file__).resolve().parent.parent

THIRD_PARTY = '''
import storyloom
from storyloom.routing import Choice

class Alphabetical:
    def choose(self, item, ctx):
        return Choice(sorted(ctx.usable)[0], {"strategy": "alphabetical"})

@storyloom.hookimpl
def loom_register_strategies(register):
    register("alphabetical", lambda options, plan: Alphabetical())
'''


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder that looks like site-packages with one installed plugin
    distribution, ``loom-alpha``, declaring an entry point in group ``storyloom``."""
    site = tmp_path / "site"
    (site / "loom_alpha-1.0.dist-info").mkdir(parents=True)
    (site / "loom_alpha.py").write_text(THIRD_PARTY)
    (site / "loom_alpha-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: loom-alpha\nVersion: 1.0\n")
    (site / "loom_alpha-1.0.dist-info" / "entry_points.txt").write_text("[storyloom]\nalpha = loom_alpha\n")
    return site


def storyloom(*args: str, cwd: Path, site: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    if site is not None:
        environ["PYTHONPATH"] = str(site)
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "storyloom.cli", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=60)


def test_bundled_plugins_are_registered_by_name():
    pm = make_plugin_manager(autoload=False)
    for name in DEFAULT_PLUGINS:
        assert pm.get_plugin(name) is not None, name


def test_no_name_blocks_a_bundled_plugin():
    pm = make_plugin_manager(["no:simulated"], autoload=False)
    assert pm.get_plugin("simulated") is None
    assert pm.is_blocked("simulated")


@pytest.mark.parametrize("name", ESSENTIAL_PLUGINS)
def test_essential_plugins_cannot_be_blocked(name):
    with pytest.raises(UsageError, match="essential"):
        make_plugin_manager([f"no:{name}"], autoload=False)


def test_p_imports_a_module_and_bad_names_are_usage_errors():
    pm = make_plugin_manager(["sample_plugins.scripted"], autoload=False)
    assert pm.get_plugin("sample_plugins.scripted") is not None
    with pytest.raises(UsageError, match="cannot import plugin 'no_such_plugin'"):
        make_plugin_manager(["no_such_plugin"], autoload=False)


def test_plugins_command_lists_entry_point_plugins_and_their_hooks(tmp_path, site):
    out = storyloom("plugins", cwd=tmp_path, site=site)
    assert out.returncode == 0, out.stderr
    assert "alpha  (" in out.stdout
    assert "loom_register_strategies" in out.stdout
    assert "alphabetical [alpha]" in out.stdout
    assert "round_robin [routing]" in out.stdout


def test_autoload_switch_skips_entry_points(tmp_path, site):
    out = storyloom("plugins", cwd=tmp_path, site=site, env={"STORYLOOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert out.returncode == 0, out.stderr
    assert "alpha" not in out.stdout
    assert "simulated" in out.stdout


def test_p_no_blocks_an_entry_point_plugin(tmp_path, site):
    out = storyloom("plugins", "-p", "no:alpha", cwd=tmp_path, site=site)
    assert out.returncode == 0, out.stderr
    assert "alphabetical" not in out.stdout


def test_third_party_strategy_runs_a_job_chosen_by_name(tmp_path, site):
    (tmp_path / "storyloom.yaml").write_text(textwrap.dedent("""
        models:
          zeta: {provider: simulated, latency_ms: 0}
          alpha: {provider: simulated, latency_ms: 0}
    """))
    (tmp_path / "job.yaml").write_text(textwrap.dedent("""
        job_id: third-party
        job_type: qc_processing
        models: [zeta, alpha]
        routing: {strategy: alphabetical}
        items:
          - {project_id: p1, chapters: 1-4}
    """))
    out = storyloom("run", "job.yaml", "-q", cwd=tmp_path, site=site)
    assert out.returncode == 0, out.stdout + out.stderr
    status = storyloom("status", "third-party", "--json", cwd=tmp_path, site=site)
    assert '"alpha"' in status.stdout and '"zeta"' not in status.stdout


def test_plugins_listed_in_settings_are_loaded(tmp_path):
    (tmp_path / "myplug.py").write_text(THIRD_PARTY.replace("alphabetical", "from-settings"))
    (tmp_path / "storyloom.yaml").write_text("plugins: [myplug]\n")
    out = storyloom("plugins", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "from-settings [myplug]" in out.stdout


def test_an_unimportable_plugin_in_settings_names_file_and_line(tmp_path):
    (tmp_path / "storyloom.yaml").write_text("grace_period: 5s\nplugins:\n  - not_a_module_anywhere\n")
    out = storyloom("plugins", cwd=tmp_path)
    assert out.returncode == 2
    assert "storyloom.yaml:3:" in out.stderr and "not_a_module_anywhere" in out.stderr
    assert "Traceback" not in out.stderr


def test_duplicate_registration_names_both_plugins():
    import storyloom as sl
    from storyloom.registry import collect

    class Twin:
        @sl.hookimpl
        def loom_register_strategies(self, register):
            register("round_robin", lambda options, plan: None)

    pm = make_plugin_manager(autoload=False)
    pm.register(Twin(), name="twin")
    with pytest.raises(UsageError, match="'round_robin' is registered by both plugin 'routing' and plugin 'twin'"):
        collect(pm)


def test_a_misspelt_hook_is_caught_by_check_pending():
    import storyloom as sl
    from storyloom.pluginmanager import check

    class Typo:
        @sl.hookimpl
        def loom_item_finsihed(self, outcome):
            pass

    pm = make_plugin_manager(autoload=False)
    pm.register(Typo(), name="typo")
    with pytest.raises(UsageError, match="loom_item_finsihed"):
        check(pm)


def test_plugins_listed_in_a_job_are_loaded_for_that_job(tmp_path):
    (tmp_path / "jobplug.py").write_text(THIRD_PARTY.replace("alphabetical", "from-job"))
    (tmp_path / "storyloom.yaml").write_text("models: {b: {provider: simulated, latency_ms: 0}, "
                                             "a: {provider: simulated, latency_ms: 0}}\n")
    (tmp_path / "job.yaml").write_text(
        "job_id: jp\njob_type: qc_processing\nplugins: [jobplug]\nmodels: [b, a]\n"
        "routing: {strategy: from-job}\nitems:\n  - {item_id: x}\n")
    out = storyloom("run", "job.yaml", "-q", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    status = json.loads(storyloom("status", "jp", "--json", cwd=tmp_path).stdout)
    assert set(status["by_model"]) == {"a"}  # chosen by the job's own plugin


def test_blocking_a_default_sink_or_renderer_just_leaves_it_out(tmp_path):
    (tmp_path / "job.yaml").write_text("job_id: nb\njob_type: qc_processing\nitems:\n  - {item_id: x}\n")
    out = storyloom("run", "job.yaml", "-p", "no:terminal", "-p", "no:reports", cwd=tmp_path,
                    env={"STORYLOOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert out.returncode == 0, out.stderr
    assert "nb: completed" in out.stdout
    assert not (tmp_path / "storyloom-out" / "nb" / "report.md").exists()  # the md renderer is blocked
    assert (tmp_path / "storyloom-out" / "nb" / "x.md").exists()


def test_a_sink_named_in_the_settings_must_exist(tmp_path):
    (tmp_path / "storyloom.yaml").write_text("progress: [terminal]\n")
    (tmp_path / "job.yaml").write_text("job_id: nb\njob_type: qc_processing\nitems:\n  - {item_id: x}\n")
    out = storyloom("run", "job.yaml", "-p", "no:terminal", cwd=tmp_path,
                    env={"STORYLOOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert out.returncode == 2
    assert "storyloom.yaml:1:" in out.stderr and "unknown progress sink 'terminal'" in out.stderr


def test_the_bundled_package_declares_the_bundled_list():
    import storyloom.pluginmanager
    import storyloom.plugins

    assert storyloom.pluginmanager.DEFAULT_PLUGINS is storyloom.plugins.DEFAULT_PLUGINS
    assert storyloom.pluginmanager.ESSENTIAL_PLUGINS is storyloom.plugins.ESSENTIAL_PLUGINS
    assert set(storyloom.plugins.ESSENTIAL_PLUGINS) <= set(storyloom.plugins.DEFAULT_PLUGINS)
    source = Path(storyloom.pluginmanager.__file__).read_text()
    assert "storyloom.plugins." not in source  # core names no bundled module


def routing_doc_example() -> str:
    """The strategy module docs/routing.md shows (``studio_plugins/routing.py``)."""
    doc = (ROOT / "docs" / "routing.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if b.startswith("# studio_plugins/routing.py")]
    return block


def test_plugins_beside_the_settings_import_without_pythonpath(tmp_path):
    # The doc's module, in the doc's package, beside storyloom.yaml; the process starts elsewhere.
    studio = tmp_path / "studio"
    (studio / "studio_plugins").mkdir(parents=True)
    (studio / "studio_plugins" / "routing.py").write_text(routing_doc_example())
    (studio / "storyloom.yaml").write_text("plugins: [studio_plugins.routing]\nmodels:\n"
                                           "  a: {provider: simulated, latency_ms: 0}\n"
                                           "  b: {provider: simulated, latency_ms: 0}\n")
    (studio / "jobs").mkdir()
    (studio / "jobs" / "job.yaml").write_text(
        "job_id: beside\njob_type: qc_processing\nmodels: [a, b]\nrouting: {strategy: alphabetical, reverse: true}\n"
        "items:\n  - {item_id: x}\n  - {item_id: y}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = storyloom("run", str(studio / "jobs" / "job.yaml"), "-q", cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    import trio
    from storyloom import api
    from storyloom.config import Options

    # The store is the working folder's; read it here rather than in another process.
    status = trio.run(lambda: api.job_status("beside", options=Options(state_dir=str(elsewhere / ".storyloom"))))
    assert set(status["by_model"]) == {"b"}  # the doc's strategy, reversed


def test_the_settings_folder_is_searched_for_that_import_only(tmp_path, monkeypatch):
    from storyloom import api
    from storyloom.config import Options

    (tmp_path / "scoped_rules_7f3a.py").write_text(THIRD_PARTY.replace("alphabetical", "scoped"))
    (tmp_path / "storyloom.yaml").write_text("plugins: [scoped_rules_7f3a]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "scoped_rules_7f3a", raising=False)
    before = list(sys.path)
    try:
        data = api.describe_plugins(options=Options(autoload=False))
    finally:
        sys.modules.pop("scoped_rules_7f3a", None)
    assert data["registries"]["strategies"]["scoped"] == "scoped_rules_7f3a"
    assert sys.path == before  # no lasting change to the process's imports


def plugins_doc_package() -> tuple[dict[str, str], str]:
    """docs/plugins.md's package: its files (by the name on their first line) and its offline install command."""
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = doc[doc.index("## A third-party routing strategy, as a package"):doc.index("## Async work")]
    files = {}
    for block in re.findall(r"```(?:python|toml)\n(.*?)```", section, re.S):
        first = block.splitlines()[0]
        assert first.startswith("# "), first
        files[first[2:].strip()] = block
    (offline,) = [cmd for cmd in re.findall(r"```sh\n(.*?)\n```", section, re.S) if "--no-index" in cmd]
    return files, offline


@pytest.mark.slow
def test_the_documented_package_installs_offline_and_storyloom_finds_it(tmp_path):
    files, offline = plugins_doc_package()
    assert set(files) == {"loom_alpha.py", "pyproject.toml"}
    package = tmp_path / "loom-alpha"
    package.mkdir()
    for name, text in files.items():
        (package / name).write_text(text)
    # A fresh environment that sees this one's packages (storyloom, setuptools) but not its plugins.
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "storyloom-test-env.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in sitemodule.getsitepackages()))
    # The doc's command as it stands, with this environment's pip pointed at the fresh one.
    args = offline.split()
    assert args[:2] == ["pip", "install"] and args[-1] == "."
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *args[1:]], cwd=package,
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("STORYLOOM_", "PYTHON"))}
    listing = subprocess.run([str(python), "-m", "storyloom", "plugins"], cwd=tmp_path, env=environ,
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "alphabetical [alpha]" in listing.stdout
