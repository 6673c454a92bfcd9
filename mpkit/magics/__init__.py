"""IPython magics: thin adapters that parse a line and call the engine."""
from ._ops_magic import OpsMagics
from ._pool_magic import PoolMagics

__all__ = ["PoolMagics", "OpsMagics", "load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython) -> None:
    pool_magics = PoolMagics(ipython)
    ipython.register_magics(pool_magics)
    ipython.register_magics(OpsMagics(ipython, pool_magics.cells))  # one folder of cell modules


def unload_ipython_extension(ipython) -> None:
    magics = ipython.magics_manager.registry.pop("PoolMagics", None)
    ipython.magics_manager.registry.pop("OpsMagics", None)
    for kind in ("cell", "line"):
        for name in ("mp_pool", "mp_module", "mp_dashboard", "mp_ps", "mp_stop"):
            ipython.magics_manager.magics[kind].pop(name, None)
    if magics is not None:
        magics.cells.close()
