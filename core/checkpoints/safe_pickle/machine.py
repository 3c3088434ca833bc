"""The opcode machine: a pre-scan of the opcodes, then an unpickler that checks every step.

:func:`prescan` walks the opcodes without building anything and refuses what checkpoints never use
and memo indices, opcode counts or nesting beyond the limits. :class:`SafeUnpickler` then runs the
pure-Python unpickler with globals resolved by :mod:`~mergetune.core.checkpoints.safe_pickle.policy`,
persistent ids by the archive, and every container opcode, argument-checked builtin and codec bounded.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any

from mergetune.core.checkpoints.safe_pickle.limits import (
    _HASH_MODULUS,
    ParseLimits,
    _bad,
    _is_int,
    _too_large,
)
from mergetune.core.checkpoints.safe_pickle.policy import (
    _ALLOWED,
    _EXTRA_OPCODES,
    _SAFE_BUILTINS,
    _TORCH_GLOBALS,
    _TORCH_OPCODES,
    PARAMETER_CLASS,
    TENSOR_CLASS,
    TORCH_DTYPES,
    TORCH_REFUSED,
    Placeholder,
    UnsafePickle,
    is_unsafe_global,
    torch_global_name,
)
from mergetune.core.checkpoints.safe_pickle.rebuild import (
    DType,
    LazyTensor,
    StorageRef,
    StorageType,
    _SafeCallable,
)
from mergetune.core.errors import CheckpointError

if TYPE_CHECKING:
    from mergetune.core.checkpoints.safe_pickle.containers import LegacyTorchFile
    from mergetune.core.checkpoints.safe_pickle.zip_archive import TorchZipFile


# ----------------------------------------------------------------------------------------------------
# limits before work: a pre-scan of the opcodes


_MEMO_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})


def prescan(data: bytes, limits: ParseLimits) -> set[str]:
    """Walk the opcodes without building anything: refuse opcodes outside the allowlist, memo
    indices, opcode counts and MARK nesting beyond the limits (the C unpickler would allocate a memo
    array as large as the index). Returns the opcodes used that torch's reader does not read."""
    return prescan_end(data, limits)[0]


def prescan_end(data: bytes, limits: ParseLimits) -> tuple[set[str], int]:
    """:func:`prescan` of the pickle at the start of ``data``; also returns where it ends (after STOP)."""
    ops = memo_entries = depth = end = 0
    extra: set[str] = set()
    try:
        for op, arg, pos in pickletools.genops(data):
            end = (pos or 0) + 1
            ops += 1
            if ops > limits.max_opcodes:
                raise _too_large(f"the pickle has more than {limits.max_opcodes} opcodes")
            name = op.name
            if name not in _TORCH_OPCODES:
                if name not in _EXTRA_OPCODES:
                    raise _bad(f"the pickle uses opcode {name}, which checkpoints never use")
                extra.add(name)
            if name in _MEMO_OPS:
                if not isinstance(arg, int) or not 0 <= arg <= limits.max_memo:
                    raise _too_large(f"the pickle uses memo index {arg}, over the limit of {limits.max_memo}")
            if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo_entries += 1
                if memo_entries > limits.max_memo:
                    raise _too_large("the pickle stores too many memo entries")
            if name == "MARK":
                depth += 1
                if depth > limits.max_mark_depth:
                    raise _too_large("the pickle nests too deeply")
            elif pickletools.markobject in op.stack_before:
                depth = max(depth - 1, 0)
            elif name == "PROTO" and isinstance(arg, int) and arg > pickle.HIGHEST_PROTOCOL:
                raise _bad(f"unsupported pickle protocol {arg}")
    except CheckpointError:
        raise
    except ValueError as e:  # unknown opcode, short argument, no STOP, an int literal too long
        msg = str(e)
        code = "truncated" if ("not enough data" in msg or "exhausted" in msg) else "not_a_checkpoint"
        raise CheckpointError(f"the file's pickle is malformed: {msg}", code=code, param="file") from None
    except (OverflowError, MemoryError, UnicodeDecodeError) as e:
        raise _bad(f"the file's pickle is malformed ({type(e).__name__})") from None
    return extra, end


# ----------------------------------------------------------------------------------------------------
# the unpickler


_SCALARS = (str, bytes, int, float, bool, complex, type(None))
_COLLIDABLE_TYPES = (float, complex)


class SafeUnpickler(pickle._Unpickler):
    """Unpickler that resolves globals by the policy (:mod:`.policy`) and storages through the archive.

    Built on the pure-Python unpickler so that every container operation can be checked: APPEND(S)
    only on lists, SETITEM(S) only on dicts, dict keys and set items of bounded count and of types
    whose hashes an attacker cannot pile up (beyond a small counted budget), NEWOBJ only on inert
    placeholders, REDUCE only with a tuple of arguments.
    """

    dispatch: dict[int, Any] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined,misc]
    # attributes of the pure-Python unpickler (not in the typeshed stubs)
    stack: list[Any]
    append: Any
    pop_mark: Any

    def __init__(
        self, data: bytes, source: TorchZipFile | LegacyTorchFile | None, limits: ParseLimits | None = None
    ) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")  # as torch.load decodes py2 strings
        self.source = source
        self.limits = limits or (source.limits if source is not None else ParseLimits())
        self.unknown_globals: list[str] = []
        self.extensions: set[str] = set()  # what torch's weights_only reader would refuse
        self._placeholders: dict[str, type] = {}
        self._collidable = 0
        self._allocated = 0
        self._builtins = {
            name: _SafeCallable(getattr(self, f"_b_{name}"), f"builtins.{name}") for name in _SAFE_BUILTINS
        }
        self._ordered_dict = _SafeCallable(self._ordered_dict_fn, "collections.OrderedDict")
        self._counter = _SafeCallable(self._counter_fn, "collections.Counter")

    # -- globals and persistent ids -----------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        qual = f"{module}.{name}"
        if not isinstance(module, str) or not isinstance(name, str):
            raise UnsafePickle(repr(qual)[:200])
        raw = qual
        module, name = torch_global_name(module, name)  # Python 2 names, mapped as torch maps them
        qual = f"{module}.{name}"
        if qual in TORCH_REFUSED:  # torch reads it, we would not read it the same way
            if name.endswith("Storage") or qual in TORCH_DTYPES:
                raise CheckpointError(
                    f"unsupported dtype or storage type {qual}", code="bad_dtype", param="file"
                )
            raise CheckpointError(
                f"the file uses {qual}, which torch reads but this service does not read the same way; "
                "refusing it rather than reading it differently",
                code="unsupported_torch_object",
                param="file",
            )
        if is_unsafe_global(module, name) or (raw != qual and is_unsafe_global(*raw.split(".", 1))):
            raise UnsafePickle(qual[:200])
        if (module, name) not in _TORCH_GLOBALS:
            self.extensions.add(qual[:200])
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return self._builtins[name]
        if (module, name) == ("collections", "OrderedDict"):
            return self._ordered_dict
        if (module, name) == ("collections", "Counter"):
            return self._counter
        if module.split(".")[0] == "torch" and name.endswith("Storage"):
            raise CheckpointError(f"unsupported storage type {qual[:200]}", code="bad_dtype", param="file")
        cls = self._placeholders.get(qual)
        if cls is None:
            cls = type(
                name.replace(".", "_")[:100] or "Unknown", (Placeholder,), {"__mt_global__": qual[:200]}
            )
            self._placeholders[qual] = cls
            if len(self.unknown_globals) < self.limits.max_unknown_globals:
                self.unknown_globals.append(qual[:200])
        return cls

    def persistent_load(self, pid: Any) -> Any:
        if self.source is None:
            raise _bad("the pickle refers to storages outside a torch archive")
        return self.source.persistent(pid)

    # -- budgets ------------------------------------------------------------------------------------

    def _charge(self, nbytes: int) -> None:
        self._allocated += nbytes
        if self._allocated > self.limits.max_alloc_bytes:
            raise _too_large("the pickle builds more data than the limit allows")

    def _check_len(self, n: int) -> None:
        if n > self.limits.max_container_items:
            raise _too_large(
                f"a container in the pickle has more than {self.limits.max_container_items} items"
            )

    def _check_key(self, key: Any) -> None:
        """Dict keys and set items: str/bytes hashes are randomised per process; small ints hash to
        themselves; objects of ours hash by identity. Keys whose hash the file chooses (big ints,
        floats, complex, flat tuples of scalars) are counted against a per-file budget so that a
        dict of colliding keys costs at most budget^2 probes; anything else is refused."""
        t = type(key)
        if t is str or t is bytes or t is bool or key is None:
            return
        if t is int and -_HASH_MODULUS < key < _HASH_MODULUS:
            return
        if (
            t is int
            or t in _COLLIDABLE_TYPES
            or (t is tuple and len(key) <= 16 and all(type(x) in _SCALARS for x in key))
        ):
            self._collidable += 1
            if self._collidable > self.limits.max_collidable_keys:
                raise _too_large(
                    "the pickle has too many dict keys of chosen hash (big ints, floats, tuples)"
                )
            return
        if isinstance(
            key, LazyTensor | Placeholder | StorageRef | DType | StorageType | _SafeCallable | type
        ):
            return
        raise _bad(f"the pickle uses a {t.__name__} as a dict key or set item")

    def _checked_items(self, items: Any) -> list:
        """The items of an iterable argument to dict()/set()/list()..., bounded, one level only."""
        if not isinstance(items, list | tuple | dict | set | frozenset | str | bytes | bytearray):
            raise _bad(f"unsupported argument of type {type(items).__name__} in the pickle")
        self._check_len(len(items))
        self._charge(8 * len(items))
        return list(items)

    # -- argument-checked builtins ------------------------------------------------------------------

    def _b_str(self, *args: Any) -> str:
        if not args:
            return ""
        if len(args) > 3 or not isinstance(args[0], str | bytes | bytearray):
            raise _bad("str() in the pickle takes only str or bytes arguments")
        _check_codec(args[1:])
        self._charge(4 * len(args[0]) + 3)
        try:
            return str(*args)
        except (TypeError, ValueError) as e:
            raise _bad(f"bad str() call in the pickle: {e}") from None

    def _b_bytes(self, *args: Any) -> bytes:
        if args and _is_int(args[0]) and not 0 <= args[0] <= self.limits.max_alloc_bytes:
            raise _too_large("the pickle asks for a huge buffer")
        if len(args) > 3:
            raise _bad("unsupported bytes() call in the pickle")
        if args and isinstance(args[0], list | tuple):
            self._check_len(len(args[0]))
            if not all(_is_int(v) for v in args[0]):
                raise _bad("bytes() in the pickle takes only a list of ints")
        elif args and not isinstance(args[0], int | str | bytes | bytearray):
            raise _bad("unsupported bytes() argument in the pickle")
        _check_codec(args[1:])
        if args:
            self._charge(args[0] if _is_int(args[0]) else len(args[0]))
        try:
            return bytes(*args)
        except (TypeError, ValueError, LookupError) as e:
            raise _bad(f"bad bytes() call in the pickle: {e}") from None

    def _b_bytearray(self, *args: Any) -> bytearray:
        return bytearray(self._b_bytes(*args))

    def _scalar_args(self, what: str, args: tuple) -> None:
        if len(args) > 2 or not all(type(a) in _SCALARS for a in args):
            raise _bad(f"{what}() in the pickle takes only scalar arguments")

    def _b_int(self, *args: Any) -> int:
        self._scalar_args("int", args)
        return int(*args)

    def _b_float(self, *args: Any) -> float:
        self._scalar_args("float", args)
        return float(*args)

    def _b_complex(self, *args: Any) -> complex:
        self._scalar_args("complex", args)
        return complex(*args)

    def _b_bool(self, *args: Any) -> bool:
        self._scalar_args("bool", args)
        return bool(*args)

    def _b_slice(self, *args: Any) -> slice:
        if len(args) > 3 or not all(type(a) in (int, type(None)) for a in args):
            raise _bad("slice() in the pickle takes only ints or None")
        return slice(*args)

    def _b_list(self, *args: Any) -> list:
        return self._checked_items(args[0]) if args else []

    def _b_tuple(self, *args: Any) -> tuple:
        return tuple(self._checked_items(args[0])) if args else ()

    def _b_set(self, *args: Any) -> set:
        items = self._checked_items(args[0]) if args else []
        for k in items:
            self._check_key(k)
        return set(items)

    def _b_frozenset(self, *args: Any) -> frozenset:
        return frozenset(self._b_set(*args))

    def _pairs(self, arg: Any) -> list[tuple[Any, Any]]:
        if isinstance(arg, dict):
            return list(arg.items())  # keys checked when that dict was built
        pairs = []
        for p in self._checked_items(arg):
            if not isinstance(p, list | tuple) or len(p) != 2:
                raise _bad("a dict in the pickle is built from something that is not a list of pairs")
            self._check_key(p[0])
            pairs.append((p[0], p[1]))
        return pairs

    def _mapping_args(self, args: tuple, kwargs: dict) -> list[tuple[Any, Any]]:
        if len(args) > 1:
            raise _bad("a dict in the pickle is built with too many arguments")
        pairs = self._pairs(args[0]) if args else []
        self._check_len(len(pairs) + len(kwargs))
        return pairs + list(kwargs.items())

    def _b_dict(self, *args: Any, **kwargs: Any) -> dict:
        return dict(self._mapping_args(args, kwargs))

    def _ordered_dict_fn(self, *args: Any, **kwargs: Any) -> OrderedDict:
        """collections.OrderedDict(pairs): pairs given as 2-tuples or 2-lists, as Python accepts."""
        return OrderedDict(self._mapping_args(args, kwargs))

    def _counter_fn(self, *args: Any) -> Counter:
        """collections.Counter(mapping): a Counter holding the mapping's pairs in order, as Python builds
        it. Counting the items of an iterable (Counter(list)) is refused."""
        if len(args) > 1:
            raise _bad("a Counter in the pickle is built with too many arguments")
        if args and args[0] is not None and type(args[0]) not in (dict, OrderedDict, Counter):
            raise CheckpointError(
                "the pickle counts the items of a sequence with collections.Counter; refusing rather "
                "than reading it differently",
                code="unsupported_torch_object",
                param="file",
            )
        counter: Counter = Counter()
        if args and args[0]:
            self._check_len(len(args[0]))
            dict.update(counter, args[0])  # keys checked when that dict was built
        return counter

    # -- container opcodes --------------------------------------------------------------------------

    def _set_items(self, target: Any, items: list) -> None:
        if isinstance(target, Placeholder):
            return
        if type(target) not in (dict, OrderedDict, Counter):
            raise _bad(f"the pickle sets items on a {type(target).__name__}")
        self._check_len(len(target) + len(items) // 2)
        for i in range(0, len(items) - 1, 2):
            self._check_key(items[i])
            target[items[i]] = items[i + 1]

    def _load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items(self.stack[-1], [key, value])

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise _bad("SETITEMS with an odd number of items")
        self._set_items(self.stack[-1], items)

    def _load_dict(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise _bad("DICT with an odd number of items")
        d: dict = {}
        self._set_items(d, items)
        self.append(d)

    def _append_items(self, target: Any, items: list) -> None:
        if isinstance(target, Placeholder):
            return
        if type(target) is not list:
            raise _bad(f"the pickle appends to a {type(target).__name__}")
        self._check_len(len(target) + len(items))
        target.extend(items)

    def _load_append(self) -> None:
        value = self.stack.pop()
        self._append_items(self.stack[-1], [value])

    def _load_appends(self) -> None:
        items = self.pop_mark()
        self._append_items(self.stack[-1], items)

    def _load_list(self) -> None:
        items = self.pop_mark()
        self._check_len(len(items))
        self.append(items)

    def _load_tuple(self) -> None:
        items = self.pop_mark()
        self._check_len(len(items))
        self.append(tuple(items))

    def _load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise _bad(f"the pickle adds items to a {type(target).__name__}")
        self._check_len(len(target) + len(items))
        for k in items:
            self._check_key(k)
        target.update(items)

    def _load_frozenset(self) -> None:
        items = self.pop_mark()
        self._check_len(len(items))
        for k in items:
            self._check_key(k)
        self.append(frozenset(items))

    # -- object opcodes -----------------------------------------------------------------------------

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not isinstance(args, tuple):
            raise _bad("REDUCE with arguments that are not a tuple")
        if not (isinstance(func, _SafeCallable) or _is_placeholder(func)):
            raise _bad(f"the pickle calls a {type(func).__name__}")
        if _is_placeholder(func):
            _no_tensor_absorbed(func, args)
        self.stack[-1] = func(*args)

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not isinstance(args, tuple):
            raise _bad("NEWOBJ with arguments that are not a tuple")
        if cls is PARAMETER_CLASS:  # torch calls torch.nn.Parameter(*args)
            self.append(cls(*args))
        elif cls is self._ordered_dict or cls is self._counter:  # cls.__new__(cls, *args): empty
            self.append(OrderedDict() if cls is self._ordered_dict else Counter())
        elif cls is TENSOR_CLASS:
            raise CheckpointError(
                "the file creates a torch.Tensor object (NEWOBJ) and re-points it; refusing rather than "
                "reading it differently",
                code="unsupported_torch_object",
                param="file",
            )
        else:
            if _is_placeholder(cls):
                _no_tensor_absorbed(cls, args)
            self.append(self._new_placeholder(cls))

    def _load_newobj_ex(self) -> None:
        self.stack.pop()  # kwargs
        self.stack.pop()  # args
        cls = self.stack.pop()
        self.append(self._new_placeholder(cls))

    def _new_placeholder(self, cls: Any) -> Placeholder:
        if isinstance(cls, type) and issubclass(cls, Placeholder):
            return cls()
        raise _bad("the pickle creates an object (NEWOBJ) of a type that is not an inert placeholder")

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST / OBJ (protocols 0 and 1)
        if not (isinstance(klass, _SafeCallable) or _is_placeholder(klass)):
            raise _bad(f"the pickle instantiates a {type(klass).__name__}")
        self.append(klass(*args))

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Placeholder):
            return  # absorbed: inert objects (ours; torch refuses such files)
        if type(inst) in (OrderedDict, Counter):
            # torch updates the object's attributes (``__dict__``), never its items: absorbed where that
            # is all it can do, refused where torch's update could fail or take another path
            if state is None or (type(state) is dict and all(type(k) is str for k in state)):
                return
            raise _bad(f"the pickle sets an unreadable state on a {type(inst).__name__}")
        # torch refuses BUILD on everything else but tensors, where it re-points the tensor (legacy
        # ``set_``): refused here rather than read with another meaning
        raise _bad(f"the pickle sets the state of a {type(inst).__name__}")

    for _op, _fn in {
        pickle.SETITEM: _load_setitem,
        pickle.SETITEMS: _load_setitems,
        pickle.DICT: _load_dict,
        pickle.APPEND: _load_append,
        pickle.APPENDS: _load_appends,
        pickle.LIST: _load_list,
        pickle.TUPLE: _load_tuple,
        pickle.ADDITEMS: _load_additems,
        pickle.FROZENSET: _load_frozenset,
        pickle.REDUCE: _load_reduce,
        pickle.NEWOBJ: _load_newobj,
        pickle.NEWOBJ_EX: _load_newobj_ex,
        pickle.BUILD: _load_build,
    }.items():
        dispatch[_op[0]] = _fn
    del _op, _fn


_TEXT_CODECS = frozenset({"latin1", "latin-1", "utf-8", "utf8", "ascii"})
_CODEC_ERRORS = frozenset({"strict", "replace", "ignore"})


def _check_codec(args: tuple) -> None:
    """(encoding[, errors]) of str()/bytes(): plain text codecs only (a codec name imports a module)."""
    if (args and args[0] not in _TEXT_CODECS) or (len(args) > 1 and args[1] not in _CODEC_ERRORS):
        raise _bad("str()/bytes() in the pickle with an unsupported encoding")


def _no_tensor_absorbed(target: Any, args: tuple) -> None:
    """An inert placeholder must never hide a tensor: one handed a tensor or a storage (an unknown
    rebuild function, a tensor subclass we do not have) refuses the file instead of dropping it."""
    if any(isinstance(a, LazyTensor | StorageRef) for a in args):
        raise _bad(
            f"the pickle hands a tensor to {getattr(target, '__mt_global__', '?')}, which is not read; "
            "refusing rather than dropping the tensor"
        )


def _is_placeholder(obj: Any) -> bool:
    return isinstance(obj, Placeholder) or (isinstance(obj, type) and issubclass(obj, Placeholder))
