"""IPython magics: thin adapters that parse a line and call the engine."""
from ._pool_magic import PoolMagics

__all__ = ["PoolMagics", "load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(PoolMagics)


def unload_ipython_extension(ipython) -> None:
    magics = ipython.magics_manager.registry.pop("PoolMagics", None)
    for kind in ("cell", "line"):
        ipython.magics_manager.magics[kind].pop("mp_pool", None)
    if magics is not None:
        magics.cells.close()
