"""``python -m mpkit`` (or ``mpkit``): command-line tools.

    python -m mpkit demo [NOTEBOOK]    run a demo notebook headless in a real Jupyter kernel

Imports of optional extras (nbclient, nbformat) happen inside the commands, so ``import mpkit``
stays light.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

DEFAULT_NOTEBOOK = Path("demo_notebooks", "01_quickstart.ipynb")
#: Seconds a single cell may run before the demo is stopped.
CELL_TIMEOUT = 120
#: Seconds the kernel may take to start.
STARTUP_TIMEOUT = 60
#: Characters of one cell's text output printed before the rest is cut.
MAX_OUTPUT_CHARS = 4000


#: Recipe subcommands: name -> (module, one-line help). A recipe's module (and pandas with it) is
#: imported only when its command runs, so ``python -m mpkit demo`` stays light.
RECIPES = {
    "excel": ("mpkit.recipes.excel", "extract chat exports in parallel, dropping system notices"),
    "dialogues": ("mpkit.recipes.dialogue", "clean chat exports into GPT2-chitchat train/val and MMI files"),
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mpkit", description="mpkit: multiprocessing that works from Jupyter notebooks.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in RECIPES.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the recipe that runs is imported
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                sub.set_defaults(run=lambda args, exc=exc, name=name: _missing_extra(name, exc))
                continue
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)

    demo = commands.add_parser(
        "demo", help="run a demo notebook in a real Jupyter kernel and print what it did",
        description="Run a notebook headless through a Jupyter kernel (nbclient), printing each code "
                    "cell's first line and text output, then a summary. Exit code 0 if every cell "
                    "ran, 1 if a cell failed, 2 if the notebook or the demo extras are missing.")
    demo.add_argument("notebook", nargs="?", default=None, metavar="NOTEBOOK",
                      help=f"the notebook to run (default: {DEFAULT_NOTEBOOK.as_posix()} in the current "
                           "directory)")
    demo.add_argument("--timeout", type=float, default=CELL_TIMEOUT, metavar="SECONDS",
                      help=f"seconds each cell may run (default: {CELL_TIMEOUT})")
    demo.add_argument("--kernel", default="python3", metavar="NAME",
                      help="Jupyter kernel to run it in (default: python3)")
    demo.set_defaults(run=_demo)
    return parser


def _missing_extra(name: str, exc: ImportError) -> int:
    print(f"mpkit {name} needs the recipes extra ({exc}). Fix: pip install 'mpkit[recipes]'",
          file=sys.stderr)
    return 2


# ---- demo ----------------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    path = Path(args.notebook) if args.notebook is not None else DEFAULT_NOTEBOOK
    if not path.is_file():
        where = Path.cwd() / path
        if args.notebook is None:
            print(f"mpkit demo: no notebook at {where} (the default, {DEFAULT_NOTEBOOK.as_posix()}, "
                  "is looked for in the current directory).\n"
                  "Fix: run this from the folder that holds demo_notebooks/ (the mpkit source "
                  "checkout), or give the notebook: python -m mpkit demo PATH/TO/NOTEBOOK.ipynb",
                  file=sys.stderr)
        else:
            print(f"mpkit demo: no notebook at {where}. Fix: check the path, or run "
                  "`python -m mpkit demo` from the mpkit source checkout to run "
                  f"{DEFAULT_NOTEBOOK.as_posix()}.", file=sys.stderr)
        return 2
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    except ImportError as exc:
        print(f"mpkit demo needs nbclient, nbformat and ipykernel ({exc}). "
              "Fix: pip install 'mpkit[demo]'", file=sys.stderr)
        return 2

    path = path.resolve()
    nb = nbformat.read(path, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    cells = f"{len(code_cells)} code cell{'s' if len(code_cells) != 1 else ''}"
    print(f"mpkit demo: running {path} ({cells}, kernel {args.kernel!r}, {args.timeout:g} s per cell)",
          flush=True)

    client = NotebookClient(nb, kernel_name=args.kernel, timeout=args.timeout,
                            startup_timeout=STARTUP_TIMEOUT, allow_errors=False,
                            # the kernel's own log (a TCP transport notice) is not the demo's output
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            resources={"metadata": {"path": str(path.parent)}})
    shown: set[int] = set()
    ran = 0

    def on_executed(cell, cell_index, **_) -> None:  # called once the cell's outputs are in
        nonlocal ran
        ran += 1
        shown.add(cell_index)
        _print_cell(ran, cell)

    client.on_cell_executed = on_executed
    started = time.perf_counter()
    failure = None
    try:
        client.execute(env=_kernel_env())
    except CellExecutionError as exc:
        failure = f"a cell raised {exc.ename}: {exc.evalue}"
    except CellTimeoutError:
        failure = f"a cell ran longer than {args.timeout:g} s (--timeout)"
    except DeadKernelError as exc:
        failure = f"the kernel died: {exc}"
    except KeyboardInterrupt:  # nbclient has shut the kernel down on the way out
        failure = "interrupted"
    except Exception as exc:  # no such kernel, kernel would not start...
        failure = f"{type(exc).__name__}: {exc}"
    elapsed = time.perf_counter() - started

    # A cell stopped by the timeout has the outputs it made so far; show them too.
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and index not in shown and cell.get("outputs"):
            ran += 1
            _print_cell(ran, cell)
    status = "OK" if failure is None else "FAILED"
    print(f"mpkit demo: {ran} of {len(code_cells)} code cells run in {elapsed:.1f} s: {status}"
          + (f" ({failure})" if failure else ""), flush=True)
    return 0 if failure is None else 1


def _kernel_env() -> dict[str, str]:
    """The environment for the kernel, so that it imports this very mpkit.

    The kernel starts in the notebook's folder; an mpkit run from a source checkout (not
    installed) would not be found there, so its folder goes on the kernel's PYTHONPATH.
    """
    import site

    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    site_dirs = {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if root not in site_dirs:
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in paths:
            env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return env


def _print_cell(number: int, cell) -> None:
    lines = cell.source.strip().splitlines() or [""]
    first = lines[0] + (" ..." if len(lines) > 1 else "")
    print(f"\n[{number}] {first}")
    text = "".join(_output_text(out) for out in cell.get("outputs", []))
    if len(text) > MAX_OUTPUT_CHARS:
        text = text[:MAX_OUTPUT_CHARS] + f"\n... ({len(text) - MAX_OUTPUT_CHARS:,} more characters)\n"
    for line in text.rstrip("\n").splitlines():
        print(f"    {line}")
    sys.stdout.flush()


def _output_text(out) -> str:
    """The text of one cell output: streams, plain-text results, errors; widgets are skipped."""
    kind = out.get("output_type")
    if kind == "stream":
        return _joined(out.get("text", ""))
    if kind in ("execute_result", "display_data"):
        data = out.get("data", {})
        if "application/vnd.jupyter.widget-view+json" in data:
            return ""  # a progress bar: its text is a snapshot from when it was first shown
        text = _joined(data.get("text/plain", ""))
        return text + "\n" if text and not text.endswith("\n") else text
    if kind == "error":
        return f"{out.get('ename', 'Error')}: {out.get('evalue', '')}\n"
    return ""


def _joined(text) -> str:
    return "".join(text) if isinstance(text, list) else str(text)
