"""%%mp_module, %mp_ps, %mp_stop and %mp_dashboard in a real IPython shell."""
import re

import pytest
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

import mpkit
from tests.widgets.shown import text

MODULE_V1 = """
def pre(x):
    return x + 1

class Model:
    def __call__(self, batch):
        return [x * 10 for x in batch]
"""

MODULE_V2 = """
def pre(x):
    return x + 2

class Model:
    def __call__(self, batch):
        if 4 in batch:
            raise ValueError("four is not allowed")
        return [x * 100 for x in batch]
"""


@pytest.fixture(scope="module")
def ip():
    shell = start_ipython()
    shell.run_line_magic("load_ext", "mpkit")
    yield shell
    shell.run_line_magic("unload_ext", "mpkit")


def run(ip, code):
    result = ip.run_cell(code)
    if result.error_in_exec is not None:
        raise result.error_in_exec
    return result.result


def test_mp_module_is_importable_and_changes_take_effect(ip, start_method):
    ip.run_cell_magic("mp_module", "stages_a", MODULE_V1)
    assert run(ip, "stages_a.pre(1)") == 2
    run(ip, "from mpkit import Pipeline\n"
            "pipe = Pipeline('mod').stage(stages_a.pre, workers=2).batch(4, 0.05).stage(stages_a.Model)")
    assert run(ip, "pipe.run(range(5), ordered=True, progress=False)") == [10, 20, 30, 40, 50]
    ip.run_cell_magic("mp_module", "stages_a", MODULE_V2)
    run(ip, "pipe = Pipeline('mod').stage(stages_a.pre, workers=2).batch(4, 0.05).stage(stages_a.Model)")
    out = run(ip, "pipe.run(range(2, 6), ordered=True, on_error='collect', progress=False)")
    assert len(out) + len(out.failures) == 4
    assert out == [] or all(v % 100 == 0 for v in out)
    assert all("four is not allowed" in str(f.exception) for f in out.failures)
    # also with mpkit.map on the warm default pool: the new code, not the first version
    run(ip, "import mpkit")
    assert run(ip, "mpkit.map(stages_a.pre, [1], progress=False)") == [3]


def test_mp_module_errors(ip):
    with pytest.raises(UsageError, match="identifier"):
        ip.run_cell_magic("mp_module", "1bad", "x = 1")
    with pytest.raises(UsageError, match="already imported"):
        ip.run_cell_magic("mp_module", "json", "x = 1")
    with pytest.raises(UsageError, match="syntax error in the cell at line 2"):
        ip.run_cell_magic("mp_module", "broken_mod", "def f(:\n    pass")


def test_mp_ps_lists_pools_and_services(ip, start_method, capsys):
    run(ip, "import mpkit\nmpkit.map(abs, [-1, -2], workers=2, progress=False)")
    run(ip, "from mpkit import Pipeline\nsvc_pipe = Pipeline('listed').stage(abs)\nsvc = svc_pipe.start()\n"
            "svc.submit(-3).result(timeout=30)")
    capsys.readouterr()
    ip.run_line_magic("mp_ps", "")
    out = capsys.readouterr().out
    assert "mpkit.map pool" in out and "pid" in out
    assert "Pipeline 'listed' (running)" in out
    ip.run_line_magic("mp_stop", "listed")
    assert run(ip, "svc.running") is False
    with pytest.raises(UsageError, match="no running service"):
        ip.run_line_magic("mp_stop", "listed")
    with pytest.raises(UsageError, match="no pipeline named"):
        ip.run_line_magic("mp_stop", "nothing_like_this")
    ip.run_line_magic("mp_stop", "--all")
    assert not mpkit.engine.process._pool.live_pools()


def test_mp_ps_and_the_dashboard_show_each_workers_cpu_and_memory(ip, start_method, capsys):
    from tests.proctree import wait_until

    run(ip, "from mpkit import Pipeline\nfrom tests.pipeline_tasks import spin\n"
            "busy_pipe = Pipeline('busy').stage(spin, workers=2, name='burn')\n"
            "busy_dash = busy_pipe.dashboard()\nbusy_svc = busy_pipe.start()\n"
            "busy_futures = [busy_svc.submit(i) for i in range(300)]")
    try:
        def burning():
            stage = run(ip, "busy_pipe.stats()").stage("burn")
            # any share of a core will do: the machine may be busy, the reading must be there
            return stage if len(stage.usage) == 2 and stage.cpu_percent > 5 and stage.done else None

        stage = wait_until(burning, 60)
        assert stage, "no snapshot saw the two workers burn CPU"
        assert all(u.rss > 1_000_000 for u in stage.usage)
        capsys.readouterr()
        ip.run_line_magic("mp_ps", "")
        out = capsys.readouterr().out
        assert "stage burn" in out and " ms/item" in out, out
        workers = [line for line in out.splitlines() if line.strip().startswith("worker") and "cpu" in line]
        assert len(workers) >= 2 and all("mem" in line and "MB" in line for line in workers), out
        cards = run(ip, "busy_dash.panel.value")
        assert re.search(r"cpu \d+% \u00b7 mem \d+ MB", text(cards)), cards       # the card's line
        assert re.search(r"worker \d+ \(pid \d+, \w+\): cpu \d+%, mem \d+ MB", cards)   # each in its tooltip
    finally:
        run(ip, "busy_svc.stop(drain=False, timeout=30)")


def test_mp_ps_gives_every_workers_cpu_in_one_labelled_unit(ip, start_method, capsys):
    """The map pool's workers and a pipeline's show CPU the same way, as a share of one core
    (the pool's was CPU seconds since the worker started, the pipeline's a percentage)."""
    run(ip, "import mpkit\nmpkit.map(abs, [-1, -2], workers=2, progress=False)")
    run(ip, "from mpkit import Pipeline\nunit_pipe = Pipeline('units').stage(abs, workers=2)\n"
            "unit_svc = unit_pipe.start()\nunit_svc.submit(-3).result(timeout=30)")
    try:
        capsys.readouterr()
        ip.run_line_magic("mp_ps", "")
        out = capsys.readouterr().out
        workers = [line for line in out.splitlines() if line.strip().startswith("worker ")]
        assert len(workers) >= 4, out
        for line in workers:
            assert re.search(r"cpu +\d[\d,]*% of a core +mem +[\d,.]+ [MG]B", line), line
    finally:
        run(ip, "unit_svc.stop(drain=False, timeout=30)")
        ip.run_line_magic("mp_stop", "--all")


def test_mp_ps_says_one_worker_in_the_singular(ip, start_method, capsys):
    run(ip, f"import mpkit\nsolo_pool = mpkit.Pool(1, start_method={start_method!r})\n"
            "solo_pool.map(abs, [-1], progress=False)")
    try:
        capsys.readouterr()
        ip.run_line_magic("mp_ps", "")
        out = capsys.readouterr().out
        assert f"Pool ({start_method}, 1 worker)" in out and "1 workers" not in out, out
    finally:
        run(ip, "solo_pool.shutdown()")


def test_mp_ps_lists_a_dask_pipeline_once_and_nothing_made_up(ip, dask_client, capsys):
    """A pipeline on Dask: its stages' pools are listed under the pipeline only (they were listed
    a second time as Dask pools), and a worker whose pid is not known yet (an idle lane: no
    task ran on it) shows no pid 0 and no CPU or memory reading of nothing."""
    ip.user_ns["dask_client"] = dask_client
    run(ip, "from mpkit import Pipeline\n"
            "dask_pipe = Pipeline('on_dask').stage(abs, workers=1, name='first').stage(abs, workers=1, name='second')\n"
            "dask_svc = dask_pipe.start(cluster=dask_client)")
    try:
        capsys.readouterr()
        ip.run_line_magic("mp_ps", "")
        out = capsys.readouterr().out
        assert "Pipeline 'on_dask' (running)" in out, out
        assert "(Dask" not in out, out                   # no stage pool listed as a pool of its own
        assert "pid 0" not in out and "mem 0 MB" not in out, out
        assert len(re.findall(r"^ +worker ", out, re.M)) == 2, out
    finally:
        run(ip, "dask_svc.stop(timeout=60)")
