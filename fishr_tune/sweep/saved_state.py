"""Whether a sweep's saved Tune state can be loaded by this fishr-tune, checked before Ray starts.

Tune pickles the searcher, the scheduler and the callbacks by module path. A sweep started by a fishr-tune whose
classes have since moved would otherwise fail deep inside `Tuner.restore` with an unpickling traceback, after the
sweep's MLflow parent run was already reopened. The check reads the pickles' references without running them.
"""

from __future__ import annotations

import importlib
import pickletools
from collections.abc import Iterator

from fishr_tune.errors import ConfigError
from fishr_tune.sweep.storage import SweepLocation

PACKAGE = "fishr_tune"
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_MEMO_GETS = {"GET", "BINGET", "LONG_BINGET"}


def pickled_globals(data: bytes) -> Iterator[tuple[str, str]]:
    """(module, qualified name) of every class or function a pickle refers to (GLOBAL and STACK_GLOBAL)."""
    pushed: list[object] = []  # the values pushed so far, as far as they matter here: strings, else None
    memo: dict[int, object] = {}
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name == "GLOBAL":
            module, _, qualname = str(arg).partition(" ")
            yield module, qualname
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            top = pushed[-2:]
            if len(top) == 2 and isinstance(top[0], str) and isinstance(top[1], str):
                yield top[0], top[1]
            pushed.append(None)
        elif name in _STRING_OPS:
            pushed.append(arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(str(arg))] = pushed[-1] if pushed else None
        elif name in _MEMO_GETS:
            pushed.append(memo.get(int(str(arg))))
        else:
            pushed.append(None)


def missing_reference(module: str, qualname: str) -> bool:
    """A reference into this package that this version cannot resolve."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return False
    try:
        found: object = importlib.import_module(module)
    except ImportError:
        return True
    for part in qualname.split("."):
        if not hasattr(found, part):
            return True
        found = getattr(found, part)
    return False


def check_restorable(location: SweepLocation) -> None:
    """Refuse, with exit 2, a sweep whose saved Tune state names classes that this fishr-tune does not have."""
    for filename in location.list_files(suffix=".pkl"):
        data = location.read_bytes(filename)
        if data is None:
            continue
        try:
            references = sorted(set(pickled_globals(data)))
        except ValueError as error:  # a torn or foreign file: Tune's own restore reports it
            raise ConfigError(f"--resume: {location.uri}/{filename} is not a readable Tune state file ({error})") from None
        missing = [f"{module}.{qualname}" for module, qualname in references if missing_reference(module, qualname)]
        if missing:
            raise ConfigError(
                f"--resume: the sweep in {location.uri} was saved by another fishr-tune version: its {filename} refers "
                f"to {', '.join(missing)}, which this version does not have. Continue it with the version that started "
                f"it, or start it again under another --name; its records stay readable (fishr-tune analyze "
                f"--records {location.uri})")
