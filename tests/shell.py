"""A real IPython shell for tests, as a notebook has one: cells run in ``__main__``.

Code run with :func:`cell` defines its functions and classes in the shell's user namespace, which
is ``sys.modules["__main__"]``'s dict, exactly as in a Jupyter kernel. That matters: such objects
cannot be imported by name in a worker, so they must travel by value.
"""
from __future__ import annotations

import builtins
import sys
import textwrap

import IPython
import pytest
from IPython.core import page
from IPython.testing.globalipapp import start_ipython


@pytest.fixture(scope="module")
def ipython():
    """One IPython shell with the extension loaded, like a notebook session.

    The shell is put away afterwards, so that tests in other modules run outside IPython again
    (mpkit shows a progress bar by default only under IPython).
    """
    started_here = IPython.get_ipython() is None
    start_ipython()
    shell = IPython.get_ipython()
    # A kernel's shell is sys.modules["__main__"] (IPython's init_sys_modules); the testing
    # shell is not, which would let pickle find cell classes by name and hide real failures.
    main = sys.modules["__main__"]
    sys.modules["__main__"] = shell.user_module
    shell.run_line_magic("load_ext", "mpkit")
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "mpkit")
        sys.modules["__main__"] = main
        if started_here:
            stop_ipython(shell)


def stop_ipython(shell) -> None:
    """Undo ``start_ipython``: its builtins, its pager, the shell singleton."""
    shell.builtin_trap.deactivate()
    for name in ("_ip", "ip", "get_ipython"):
        vars(builtins).pop(name, None)
    if hasattr(page, "orig_page"):
        page.pager_page = page.orig_page
    type(shell).clear_instance()
    if hasattr(start_ipython, "already_called"):
        del start_ipython.already_called  # a later module may start a shell of its own


@pytest.fixture
def ip(ipython):
    """The shell, with the names a test defines removed afterwards."""
    before = set(ipython.user_ns)
    yield ipython
    for name in set(ipython.user_ns) - before:
        ipython.user_ns.pop(name, None)


def cell(ip, code: str):
    """Run ``code`` as a notebook cell; raise what it raised, return the value of its last line."""
    result = ip.run_cell(textwrap.dedent(code).strip("\n"), store_history=True)
    if result.error_before_exec is not None:
        raise result.error_before_exec
    if result.error_in_exec is not None:
        raise result.error_in_exec
    return result.result
