"""``%%mp_pool --cluster`` and cell modules on a real Dask LocalCluster, in a real IPython shell:
functions and classes written in cells after the cluster started reach its workers by value."""
from __future__ import annotations

import textwrap

import pytest
from IPython.core.error import UsageError

pytest.importorskip("distributed")

from tests.shell import cell, ip, ipython  # noqa: E402,F401,F811  (fixtures: a kernel-like shell)

pytestmark = pytest.mark.timeout(180)


def mp_pool(ip, line: str, body: str):
    return ip.run_cell_magic("mp_pool", line, textwrap.dedent(body).lstrip("\n"))


CELL = """
class Scaler:
    def __init__(self, k):
        self.k = k

def scale(x):
    print(f"scaling {x}")
    return Scaler(3).k * x + OFFSET
"""


def test_mp_pool_on_a_cluster_by_variable_and_by_address(ip, dask_client, capsys):
    ip.user_ns["client"] = dask_client
    ip.user_ns["address"] = dask_client.scheduler.address
    cell(ip, "OFFSET = 1")
    out = mp_pool(ip, "range(6) --share OFFSET --cluster client --no-progress", CELL)
    assert out == [3 * x + 1 for x in range(6)]
    assert "] scaling 5" in capsys.readouterr().out
    cell(ip, "OFFSET = 100")
    out = mp_pool(ip, f"range(3) --share OFFSET --cluster {dask_client.scheduler.address} --no-progress", CELL)
    assert out == [100, 103, 106]


def test_mp_module_made_after_the_cluster_started_reaches_its_workers(ip, dask_client):
    """A cell module is not importable on the workers (it did not exist when they started): it
    must travel by value, or every worker fails to unpickle the task and the map hangs."""
    ip.run_cell_magic("mp_module", "late_cells", "def triple(x):\n    return 3 * x\n")
    ip.user_ns["client"] = dask_client
    assert cell(ip, "import mpkit\nmpkit.map(late_cells.triple, range(5), cluster=client, progress=False)") \
        == [0, 3, 6, 9, 12]


def test_cluster_and_start_method_together_are_a_usage_error(ip, dask_client):
    ip.user_ns["client"] = dask_client
    with pytest.raises(UsageError, match="start_method"):
        mp_pool(ip, "range(3) --cluster client --start-method spawn", "def f(x):\n    return x\n")


def test_mp_ps_lists_a_dask_pool_with_its_workers(ip, dask_client, capsys):
    ip.user_ns["client"] = dask_client
    cell(ip, "import mpkit\nmpkit.map(abs, [-1], cluster=client, progress=False)")
    capsys.readouterr()
    ip.run_line_magic("mp_ps", "")
    out = capsys.readouterr().out
    assert f"mpkit.map pool (Dask Client {dask_client.scheduler.address}, 2 threads)" in out, out
    assert out.count("    worker ") == 2, out
