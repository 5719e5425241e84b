# tgrpo executor harness: the fork-server ("zygote") of one sandbox slot, the trusted
# test process T and the untrusted program process U.
#
# Embedded in the tgrpo-executor crate, written to a root-only temporary directory and
# started by the worker as `python3 -I -S -B harness.py` with an empty environment, fd
# 0/1 as the control channel to the worker and fd 2 as its log. The design and threat
# model are documented in the crate docs (executor-worker/src/lib.rs); in short:
#
#   worker --frames-- zygote (root, this slot's mount/net/uts namespaces, never runs
#                      |  |   untrusted code)
#       fork per job   |  |  fork into new pid, mount and ipc namespaces per job
#                      T  U
#   T: trusted tester, own uid, runs setup code and each test statement with its own
#      pristine builtins, reports results on a pipe only it holds.
#   U: the program: pid 1 of its pid namespace, another uid, seccomp, rlimits; runs
#      the program, then only answers T's calls over a socket, with DATA-ONLY values.
#
# Everything U sends is decoded by T into plain data (or opaque handles), and T compares
# with its own `==`; U can choose the return values of its functions, nothing more.

import _socket
import builtins
import ctypes
import fcntl
import gc
import json
import mmap
import os
import resource
import select
import struct
import sys
import time
import types

# Pre-imported so that executions (forks) pay nothing for them: the modules MBPP-style
# programs import most (re, math, collections, heapq, itertools, ...). Every module
# imported here makes each fork dearer (more pages to map, copy and tear down), so the
# rarely used rest is imported on demand, by U or by T, from the read-only /usr.
import array
import bisect
import cmath
import collections
import copy
import functools
import heapq
import itertools
import math
import operator
import re
import string

SIGKILL = 9

HEADER = struct.Struct(">I")

# Stdlib modules that T imports itself when a test names them (or names a global of the
# program that is a module): a program cannot swap `math.isclose` under a test's feet.
SAFE_MODULES = frozenset(
    """array bisect cmath collections copy datetime decimal fractions functools hashlib
    heapq itertools math operator random re statistics string typing textwrap unicodedata
    numbers enum dataclasses keyword calendar difflib binascii base64 pprint struct sys
    time json""".split()
)

# Builtins that a value sent by U may name (tag "n"); anything that evaluates code or
# reaches T's globals is excluded even though a test itself may use it.
BUILTIN_DENY = frozenset(
    """eval exec compile open input __import__ breakpoint exit quit help globals locals
    vars setattr delattr getattr copyright credits license __build_class__ __loader__
    __spec__ memoryview""".split()
)

MAX_DEPTH = 200
SMALL_INT = 1 << 62

# What json.dumps(value, separators=(",", ":")) uses, built once in the zygote instead
# of once per message in every child (a fresh encoder per call touches, and so copies,
# dozens of the zygote's pages in each child).
_encode_json = json.JSONEncoder(separators=(",", ":")).encode


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed message."""


class PeerGone(Exception):
    """The peer's end of the channel is closed: the program exited or crashed."""


class RemoteError(Exception):
    """An exception raised by the program that is not a builtin exception type."""


def first_line(exc):
    text = str(exc)
    line = text.split("\n", 1)[0]
    return line[:500]


def describe(exc):
    line = first_line(exc)
    name = type(exc).__name__
    return name + ": " + line if line else name


# ---------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------


def fd_write_all(fd, data):
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fd_read_exact(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def fd_write_frame(fd, payload):
    fd_write_all(fd, HEADER.pack(len(payload)) + payload)


def fd_read_frame(fd):
    head = fd_read_exact(fd, 4)
    if head is None:
        return None
    (length,) = HEADER.unpack(head)
    body = fd_read_exact(fd, length)
    if body is None:
        raise EOFError("control channel closed mid-frame")
    return body


# ---------------------------------------------------------------------------------------
# The value codec and the remote-object peer (used by both T and U)
# ---------------------------------------------------------------------------------------

_DICT_KEYS = type({}.keys())
_DICT_VALUES = type({}.values())
_DICT_ITEMS = type({}.items())
_ALLOWED_BUILTINS = {
    name: value
    for name, value in vars(builtins).items()
    if not name.startswith("_") and name not in BUILTIN_DENY
}
_BUILTIN_NAME_OF = {}
for _name, _value in _ALLOWED_BUILTINS.items():
    try:
        _BUILTIN_NAME_OF.setdefault(id(_value), _name)
    except TypeError:
        pass
_ALLOWED_BUILTIN_IDS = frozenset(id(v) for v in _ALLOWED_BUILTINS.values())
_BUILTIN_NAMES = frozenset(vars(builtins))

_BINOPS = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
    "lshift": operator.lshift,
    "rshift": operator.rshift,
    "and": operator.and_,
    "or": operator.or_,
    "xor": operator.xor,
    "matmul": operator.matmul,
    "divmod": divmod,
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}

_UNOPS = {
    "neg": operator.neg,
    "pos": operator.pos,
    "abs": abs,
    "invert": operator.invert,
    "bool": bool,
    "len": len,
    "str": str,
    "repr": repr,
    "int": int,
    "float": float,
    "index": operator.index,
    "complex": complex,
    "iter": iter,
    "next": next,
    "reversed": reversed,
    "trunc": math.trunc,
    "floor": math.floor,
    "ceil": math.ceil,
}


class Proxy:
    """A handle to an object that lives in the other process.

    In T, a proxy never lets the program decide a comparison with T's own data: `==`
    against anything that is not another proxy is identity (False), ordering against
    data is a TypeError and `x in proxy` iterates the proxy and compares in T.
    """

    __slots__ = ("_tgrpo_peer", "_tgrpo_rid", "__weakref__")

    def __getattr__(self, name):
        if name.startswith("_tgrpo"):
            raise AttributeError(name)
        return _peer_of(self).request("getattr", self, name)

    def __setattr__(self, name, value):
        if name.startswith("_tgrpo"):
            object.__setattr__(self, name, value)
        else:
            _peer_of(self).request("setattr", self, name, value)

    def __delattr__(self, name):
        _peer_of(self).request("delattr", self, name)

    def __call__(self, *args, **kwargs):
        return _peer_of(self).request("call", self, args, kwargs)

    def __getitem__(self, key):
        return _peer_of(self).request("getitem", self, key)

    def __setitem__(self, key, value):
        _peer_of(self).request("setitem", self, key, value)

    def __delitem__(self, key):
        _peer_of(self).request("delitem", self, key)

    def __len__(self):
        return _peer_of(self).request("unop", "len", self)

    def __bool__(self):
        return _peer_of(self).request("unop", "bool", self)

    def __str__(self):
        return _peer_of(self).request("unop", "str", self)

    def __repr__(self):
        try:
            return _peer_of(self).request("unop", "repr", self)
        except Exception:
            return "<remote object>"

    def __format__(self, spec):
        return _peer_of(self).request("format", self, spec)

    def __iter__(self):
        return RemoteIterator(_peer_of(self).request("unop", "iter", self))

    def __next__(self):
        return _peer_of(self).request("unop", "next", self)

    def __reversed__(self):
        return RemoteIterator(_peer_of(self).request("unop", "reversed", self))

    def __contains__(self, item):
        for element in self:
            if element is item or element == item:
                return True
        return False

    def __hash__(self):
        return object.__hash__(self)

    def __eq__(self, other):
        if isinstance(other, Proxy):
            return _peer_of(self).request("binop", "eq", self, other)
        return NotImplemented

    def __ne__(self, other):
        if isinstance(other, Proxy):
            return _peer_of(self).request("binop", "ne", self, other)
        return NotImplemented

    def __instancecheck__(self, instance):
        return _peer_of(self).request("isinstance", instance, self)

    def __subclasscheck__(self, subclass):
        return _peer_of(self).request("issubclass", subclass, self)

    def __round__(self, ndigits=None):
        return _peer_of(self).request("round", self, ndigits)

    def __int__(self):
        return _peer_of(self).request("unop", "int", self)

    def __float__(self):
        return _peer_of(self).request("unop", "float", self)

    def __index__(self):
        return _peer_of(self).request("unop", "index", self)

    def __complex__(self):
        return _peer_of(self).request("unop", "complex", self)

    def __trunc__(self):
        return _peer_of(self).request("unop", "trunc", self)

    def __floor__(self):
        return _peer_of(self).request("unop", "floor", self)

    def __ceil__(self):
        return _peer_of(self).request("unop", "ceil", self)


def _loaded_type(module_name, type_name):
    module = sys.modules.get(module_name)
    return getattr(module, type_name, None) if module is not None else None


def _peer_of(proxy):
    return object.__getattribute__(proxy, "_tgrpo_peer")


def _rid_of(proxy):
    return object.__getattribute__(proxy, "_tgrpo_rid")


def _make_ordering(op):
    def method(self, other):
        if isinstance(other, Proxy):
            return _peer_of(self).request("binop", op, self, other)
        return NotImplemented

    method.__name__ = "__" + op + "__"
    return method


def _make_binop(op, reflected):
    if reflected:

        def method(self, other):
            return _peer_of(self).request("binop", op, other, self)

    else:

        def method(self, other):
            return _peer_of(self).request("binop", op, self, other)

    return method


def _make_unop(op):
    def method(self):
        return _peer_of(self).request("unop", op, self)

    return method


for _op in ("lt", "le", "gt", "ge"):
    setattr(Proxy, "__" + _op + "__", _make_ordering(_op))
for _op, _dunder in (
    ("add", "add"),
    ("sub", "sub"),
    ("mul", "mul"),
    ("truediv", "truediv"),
    ("floordiv", "floordiv"),
    ("mod", "mod"),
    ("pow", "pow"),
    ("lshift", "lshift"),
    ("rshift", "rshift"),
    ("and", "and"),
    ("or", "or"),
    ("xor", "xor"),
    ("matmul", "matmul"),
    ("divmod", "divmod"),
):
    setattr(Proxy, "__" + _dunder + "__", _make_binop(_op, False))
    setattr(Proxy, "__r" + _dunder + "__", _make_binop(_op, True))
for _op in ("neg", "pos", "abs", "invert"):
    setattr(Proxy, "__" + _op + "__", _make_unop(_op))


class RemoteIterator:
    """Iterates a remote iterator in chunks, so that a long generator costs few round
    trips. Items are plain decoded values or proxies; T compares them itself."""

    __slots__ = ("_source", "_buffer", "_end")

    CHUNK = 128

    def __init__(self, source):
        self._source = source
        self._buffer = collections.deque()
        self._end = None

    def __iter__(self):
        return self

    def __next__(self):
        if not self._buffer:
            if self._end is not None:
                self._raise_end()
            if not isinstance(self._source, Proxy):
                # The program answered iter() with plain data: iterate it here.
                self._buffer.extend(_plain_iter_items(self._source))
                self._end = "stop"
            else:
                reply = _peer_of(self._source).request("chunk", self._source, self.CHUNK)
                if type(reply) is not tuple or len(reply) != 2 or type(reply[0]) is not list:
                    raise ProtocolError("bad iterator chunk")
                items, end = reply
                self._buffer.extend(items)
                if end is not None:
                    if end != "stop" and not (
                        type(end) is tuple
                        and len(end) == 2
                        and type(end[0]) is str
                        and type(end[1]) is str
                    ):
                        raise ProtocolError("bad iterator end")
                    self._end = end
            if not self._buffer:
                self._raise_end()
        return self._buffer.popleft()

    def _raise_end(self):
        if self._end == "stop" or self._end is None:
            raise StopIteration
        raise remote_exception(self._end[0], self._end[1])


def _plain_iter_items(value):
    return list(value)


def remote_exception(type_name, message):
    """Rebuilds an exception raised by the peer: a builtin exception type by name when it
    is one (so `except ValueError` in a test works), RemoteError otherwise."""
    candidate = _ALLOWED_BUILTINS.get(type_name)
    if (
        isinstance(candidate, type)
        and issubclass(candidate, Exception)
        and type_name not in ("ProtocolError", "PeerGone")
    ):
        try:
            return candidate(message) if message else candidate()
        except Exception:
            pass
    return RemoteError(type_name + (": " + message if message else ""))


class Peer:
    """One end of the T<->U channel: frames of JSON over a stream socket, a table of the
    local objects the other side holds handles to, and proxies for the other side's.

    `trusted` is True in T: there the decoder is the security boundary (strict tags,
    depth and size limits, no code paths that evaluate anything) and the other side may
    only call the callables T chose to send, nothing else.
    """

    def __init__(self, sock, trusted, max_frame):
        self.sock = sock
        self.trusted = trusted
        self.max_frame = max_frame
        self.exports = {}
        self.export_ids = {}
        self.proxies = {}
        self.next_id = 1
        self.dead = False
        self.namespace = None

    # -- framing ----------------------------------------------------------------------

    def send(self, message):
        data = _encode_json(message).encode("utf-8", "surrogatepass")
        try:
            self.sock.sendall(HEADER.pack(len(data)) + data)
        except OSError as err:
            self.dead = True
            raise PeerGone("program channel closed") from err

    def _recv_exact(self, n):
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                count = self.sock.recv_into(view[got:], n - got)
            except OSError as err:
                self.dead = True
                raise PeerGone("program channel closed") from err
            if count == 0:
                self.dead = True
                raise PeerGone("program exited")
            got += count
        return bytes(buf)

    def recv(self):
        if self.dead:
            raise PeerGone("program exited")
        (length,) = HEADER.unpack(self._recv_exact(4))
        if length > self.max_frame:
            self.dead = True
            raise ProtocolError("message of %d bytes exceeds the limit" % length)
        data = self._recv_exact(length)
        try:
            message = json.loads(data.decode("utf-8", "surrogatepass"))
        except (ValueError, RecursionError, MemoryError) as err:
            self.dead = True
            raise ProtocolError("undecodable message") from err
        if type(message) is not list or not message or type(message[0]) is not str:
            self.dead = True
            raise ProtocolError("malformed message")
        return message

    def closed(self):
        """Whether the other side is known to be gone (EOF waiting on the socket)."""
        if self.dead:
            return True
        readable, _, _ = select.select([self.sock], [], [], 0)
        if readable:
            try:
                data = self.sock.recv(1, _socket.MSG_PEEK)
            except OSError:
                data = b""
            if not data:
                self.dead = True
        return self.dead

    # -- encoding ---------------------------------------------------------------------

    def export(self, value):
        key = id(value)
        rid = self.export_ids.get(key)
        if rid is None:
            rid = self.next_id
            self.next_id += 1
            self.exports[rid] = value
            self.export_ids[key] = rid
        return rid

    def enc(self, value, depth=0):
        if depth > MAX_DEPTH:
            raise ValueError("value nested too deeply to send")
        kind = type(value)
        if value is None or kind is bool or kind is str:
            return value
        if kind is int:
            if -SMALL_INT < value < SMALL_INT:
                return value
            return ["I", format(value, "x")]
        if kind is float:
            if math.isfinite(value):
                return value
            return ["f", repr(value)]
        depth += 1
        enc = self.enc
        if kind is list:
            return ["l"] + [enc(item, depth) for item in value]
        if kind is tuple:
            return ["t"] + [enc(item, depth) for item in value]
        if kind is dict:
            return ["d"] + self._enc_pairs(value, depth)
        if kind is set:
            return ["s"] + [enc(item, depth) for item in value]
        if kind is frozenset:
            return ["fs"] + [enc(item, depth) for item in value]
        if kind is Proxy:
            if _peer_of(value) is self:
                return ["H", _rid_of(value)]
            raise ValueError("foreign proxy")
        if kind is bytes:
            return ["b", value.decode("latin-1")]
        if kind is bytearray:
            return ["ba", value.decode("latin-1")]
        if kind is complex:
            return ["c", enc(value.real, depth), enc(value.imag, depth)]
        if kind is collections.deque:
            return ["q", value.maxlen] + [enc(item, depth) for item in value]
        if kind is collections.OrderedDict:
            return ["od"] + self._enc_pairs(value, depth)
        if kind is collections.Counter:
            return ["C"] + self._enc_pairs(value, depth)
        if kind is collections.defaultdict:
            factory = value.default_factory
            factory_code = None
            if factory is not None and id(factory) in _BUILTIN_NAME_OF:
                factory_code = _BUILTIN_NAME_OF[id(factory)]
            return ["dd", factory_code] + self._enc_pairs(value, depth)
        if kind is range:
            return ["r", value.start, value.stop, value.step]
        if kind is slice:
            return ["sl", enc(value.start, depth), enc(value.stop, depth), enc(value.step, depth)]
        if kind is _DICT_KEYS:
            return ["dk"] + [enc(item, depth) for item in value]
        if kind is _DICT_VALUES:
            return ["dv"] + [enc(item, depth) for item in value]
        if kind is _DICT_ITEMS:
            return ["di"] + [enc(item, depth) for item in value]
        if kind is types.ModuleType:
            return ["m", str(getattr(value, "__name__", "")), self.export(value)]
        # decimal and fractions are not pre-imported: a value of theirs can only exist
        # when the module is loaded already.
        if kind is _loaded_type("decimal", "Decimal"):
            return ["D", str(value)]
        if kind is _loaded_type("fractions", "Fraction"):
            return ["F", enc(value.numerator, depth), enc(value.denominator, depth)]
        if id(value) in _BUILTIN_NAME_OF and id(value) in _ALLOWED_BUILTIN_IDS:
            return ["n", _BUILTIN_NAME_OF[id(value)]]
        # Subclasses of data types travel as their base value (a namedtuple as a tuple,
        # an IntEnum as an int): equality with data then means what it means for data.
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return enc(int.__index__(value), depth)
        if isinstance(value, float):
            return enc(float.__float__(value), depth)
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, tuple):
            return ["t"] + [enc(item, depth) for item in tuple.__iter__(value)]
        if isinstance(value, list):
            return ["l"] + [enc(item, depth) for item in list.__iter__(value)]
        if self.trusted and not callable(value):
            raise TypeError("cannot pass a %s to the program" % kind.__name__)
        return ["h", self.export(value)]

    def _enc_pairs(self, mapping, depth):
        out = []
        for key, item in dict.items(mapping):
            out.append(self.enc(key, depth))
            out.append(self.enc(item, depth))
        return out

    # -- decoding ---------------------------------------------------------------------

    def proxy(self, rid):
        proxy = self.proxies.get(rid)
        if proxy is None:
            proxy = object.__new__(Proxy)
            object.__setattr__(proxy, "_tgrpo_peer", self)
            object.__setattr__(proxy, "_tgrpo_rid", rid)
            self.proxies[rid] = proxy
        return proxy

    def dec(self, value, depth=0):
        kind = type(value)
        if value is None or kind is bool or kind is str or kind is int or kind is float:
            return value
        if kind is not list or not value or type(value[0]) is not str:
            raise ProtocolError("malformed value")
        if depth > MAX_DEPTH:
            raise ProtocolError("value nested too deeply")
        depth += 1
        tag = value[0]
        body = value[1:]
        dec = self.dec
        if tag == "l":
            return [dec(item, depth) for item in body]
        if tag == "t":
            return tuple([dec(item, depth) for item in body])
        if tag == "d":
            return dict(self._dec_pairs(body, depth))
        if tag == "s":
            # Built the way CPython builds a set display (a merge from a frozenset), so
            # that iteration order matches what the same test would see in one process.
            return set(frozenset([dec(item, depth) for item in body]))
        if tag == "fs":
            return frozenset(set([dec(item, depth) for item in body]))
        if tag == "I":
            self._expect(body, 1, str)
            try:
                return int(body[0], 16)
            except ValueError:
                raise ProtocolError("bad integer") from None
        if tag == "f":
            self._expect(body, 1, str)
            if body[0] not in ("nan", "inf", "-inf"):
                raise ProtocolError("bad float")
            return float(body[0])
        if tag == "h":
            self._expect(body, 1, int)
            return self.proxy(body[0])
        if tag == "H":
            self._expect(body, 1, int)
            try:
                return self.exports[body[0]]
            except KeyError:
                raise ProtocolError("unknown handle") from None
        if tag == "b" or tag == "ba":
            self._expect(body, 1, str)
            try:
                raw = body[0].encode("latin-1")
            except UnicodeEncodeError:
                raise ProtocolError("bad bytes") from None
            return raw if tag == "b" else bytearray(raw)
        if tag == "c":
            if len(body) != 2:
                raise ProtocolError("bad complex")
            real, imag = dec(body[0], depth), dec(body[1], depth)
            if type(real) is not float or type(imag) is not float:
                raise ProtocolError("bad complex")
            return complex(real, imag)
        if tag == "D":
            self._expect(body, 1, str)
            if len(body[0]) > 10000:
                raise ProtocolError("bad decimal")
            import decimal

            try:
                return decimal.Decimal(body[0])
            except (decimal.InvalidOperation, ValueError):
                raise ProtocolError("bad decimal") from None
        if tag == "F":
            if len(body) != 2:
                raise ProtocolError("bad fraction")
            num, den = dec(body[0], depth), dec(body[1], depth)
            if type(num) is not int or type(den) is not int or den <= 0:
                raise ProtocolError("bad fraction")
            import fractions

            return fractions.Fraction(num, den)
        if tag == "q":
            if not body or not (body[0] is None or (type(body[0]) is int and body[0] >= 0)):
                raise ProtocolError("bad deque")
            return collections.deque([dec(item, depth) for item in body[1:]], body[0])
        if tag == "od":
            return collections.OrderedDict(self._dec_pairs(body, depth))
        if tag == "C":
            return collections.Counter(dict(self._dec_pairs(body, depth)))
        if tag == "dd":
            if not body:
                raise ProtocolError("bad defaultdict")
            factory = None
            if body[0] is not None:
                factory = self._builtin(body[0])
                if not isinstance(factory, type):
                    raise ProtocolError("bad defaultdict factory")
            return collections.defaultdict(factory, self._dec_pairs(body[1:], depth))
        if tag == "r":
            if len(body) != 3 or any(type(part) is not int for part in body) or body[2] == 0:
                raise ProtocolError("bad range")
            return range(body[0], body[1], body[2])
        if tag == "sl":
            if len(body) != 3:
                raise ProtocolError("bad slice")
            return slice(dec(body[0], depth), dec(body[1], depth), dec(body[2], depth))
        if tag == "dk":
            return dict.fromkeys([dec(item, depth) for item in body]).keys()
        if tag == "dv":
            return dict(enumerate([dec(item, depth) for item in body])).values()
        if tag == "di":
            pairs = [dec(item, depth) for item in body]
            if any(type(pair) is not tuple or len(pair) != 2 for pair in pairs):
                raise ProtocolError("bad dict items")
            return dict(pairs).items()
        if tag == "n":
            self._expect(body, 1, str)
            return self._builtin(body[0])
        if tag == "m":
            if len(body) != 2 or type(body[0]) is not str or type(body[1]) is not int:
                raise ProtocolError("bad module")
            return self._module(body[0], body[1])
        raise ProtocolError("unknown tag")

    @staticmethod
    def _expect(body, count, kind):
        if len(body) != count or type(body[0]) is not kind:
            raise ProtocolError("malformed value")

    def _dec_pairs(self, body, depth):
        if len(body) % 2:
            raise ProtocolError("odd mapping")
        dec = self.dec
        pairs = []
        for index in range(0, len(body), 2):
            key = dec(body[index], depth)
            try:
                hash(key)
            except TypeError:
                raise ProtocolError("unhashable key") from None
            pairs.append((key, dec(body[index + 1], depth)))
        return pairs

    def _builtin(self, name):
        if self.trusted:
            try:
                return _ALLOWED_BUILTINS[name]
            except KeyError:
                raise ProtocolError("builtin not allowed") from None
        try:
            return getattr(builtins, name)
        except AttributeError:
            raise ProtocolError("unknown builtin") from None

    def _module(self, name, rid):
        if name in SAFE_MODULES:
            return sys.modules.get(name) or __import__(name)
        if self.trusted:
            return self.proxy(rid)
        return __import__(name)

    # -- requests ---------------------------------------------------------------------

    def request(self, op, *args):
        """Asks the peer to perform `op`; while waiting, serves the peer's own requests
        (a program calling back a test's lambda). Returns the decoded result or raises
        the peer's exception."""
        self.send_request(op, *args)
        return self.wait_reply()

    def send_request(self, op, *args):
        """Sends a request without waiting for its reply (see `wait_reply`)."""
        if self.dead:
            raise PeerGone("program exited")
        try:
            payload = ["q", op] + [self.enc(arg) for arg in args]
        except RecursionError:
            raise ValueError("value nested too deeply to send") from None
        self.send(payload)

    def wait_reply(self):
        """Waits for the reply to the oldest unanswered request, serving the peer's own
        requests meanwhile."""
        while True:
            message = self.recv()
            head = message[0]
            if head == "r":
                if len(message) != 2:
                    self.dead = True
                    raise ProtocolError("malformed reply")
                try:
                    return self.dec(message[1])
                except RecursionError:
                    raise ProtocolError("value nested too deeply") from None
            if head == "e":
                if len(message) != 3 or type(message[1]) is not str or type(message[2]) is not str:
                    self.dead = True
                    raise ProtocolError("malformed exception")
                if self.trusted and message[1] == "SystemExit":
                    # The program exits after this reply; whatever it claims, it gets
                    # no further calls.
                    self.dead = True
                raise remote_exception(message[1][:100], message[2][:500])
            if head == "q":
                self.serve_one(message)
                continue
            self.dead = True
            raise ProtocolError("unexpected message")

    def serve_one(self, message):
        try:
            if len(message) < 2 or type(message[1]) is not str:
                raise ProtocolError("malformed request")
            args = [self.dec(arg) for arg in message[2:]]
            result = self.perform(message[1], args)
            reply = ["r", self.enc(result)]
        except (PeerGone, ProtocolError):
            raise
        except BaseException as exc:  # the program may raise SystemExit and friends
            if self.dead:
                raise PeerGone("program exited") from None
            reply = ["e", type(exc).__name__, first_line(exc)]
            if not self.trusted and isinstance(exc, SystemExit):
                # sys.exit() inside a call ends the program, as it would in one process:
                # the tests after this one do not run.
                _flush_stdio()
                self.send(reply)
                os._exit(0)
        if not self.trusted:
            # Output first: the execution may be torn down as soon as T has its answer.
            _flush_stdio()
        self.send(reply)

    def perform(self, op, args):
        if self.trusted:
            # The program may only call back what the tests handed it.
            if op != "call" or len(args) != 3:
                raise PermissionError("tests expose only calls to the program")
            target, call_args, call_kwargs = args
            if isinstance(target, Proxy) or not callable(target):
                raise PermissionError("not a callable of the tests")
            if type(call_args) is not tuple or type(call_kwargs) is not dict:
                raise ProtocolError("malformed call")
            return target(*call_args, **call_kwargs)
        return _perform_untrusted(self, op, args)

    def serve_forever(self):
        while True:
            try:
                message = self.recv()
            except (PeerGone, ProtocolError):
                return
            if message[0] != "q":
                return
            try:
                self.serve_one(message)
            except (PeerGone, ProtocolError):
                return


def _perform_untrusted(peer, op, args):
    if op == "get":
        (name,) = args
        namespace = peer.namespace
        if name in namespace:
            return (True, namespace[name])
        return (False, None)
    if op == "getmany":
        (names,) = args
        namespace = peer.namespace
        return [(True, namespace[name]) if name in namespace else (False, None) for name in names]
    if op == "call":
        target, call_args, call_kwargs = args
        return target(*call_args, **call_kwargs)
    if op == "getattr":
        return getattr(args[0], args[1])
    if op == "setattr":
        setattr(args[0], args[1], args[2])
        return None
    if op == "delattr":
        delattr(args[0], args[1])
        return None
    if op == "getitem":
        return args[0][args[1]]
    if op == "setitem":
        args[0][args[1]] = args[2]
        return None
    if op == "delitem":
        del args[0][args[1]]
        return None
    if op == "binop":
        return _BINOPS[args[0]](args[1], args[2])
    if op == "unop":
        return _UNOPS[args[0]](args[1])
    if op == "format":
        return format(args[0], args[1])
    if op == "round":
        return round(args[0]) if args[1] is None else round(args[0], args[1])
    if op == "isinstance":
        return isinstance(args[0], args[1])
    if op == "issubclass":
        return issubclass(args[0], args[1])
    if op == "chunk":
        iterator, count = args
        items = []
        try:
            for _ in range(count):
                items.append(next(iterator))
        except StopIteration:
            return (items, "stop")
        except BaseException as exc:
            return (items, (type(exc).__name__, first_line(exc)))
        return (items, None)
    raise ValueError("unknown operation " + str(op))


def _flush_stdio():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


# ---------------------------------------------------------------------------------------
# The test namespace (T)
# ---------------------------------------------------------------------------------------


class TestNamespace(dict):
    """Globals of the test code in T. Names the tests define live here; a missing name is
    looked up in the program (U). Names of builtins resolve to T's own builtins unless
    the program's function under test itself bears a builtin's name (`def sum(a, b)` in
    MBPP 126); names of stdlib modules resolve to T's own module."""

    __slots__ = ()

    def __missing__(self, name):
        state = _NAMESPACE_STATE
        if name in _BUILTIN_NAMES and name not in state["honor"]:
            raise KeyError(name)
        cache = state["cache"]
        if name in cache:
            found, value = cache[name]
        else:
            peer = state["peer"]
            if peer is None:
                raise KeyError(name)
            found, value = _lookup_reply(peer.request("get", name))
            if found and isinstance(value, (Proxy, types.ModuleType)):
                cache[name] = (found, value)
        if not found:
            raise KeyError(name)
        if name in SAFE_MODULES:
            return sys.modules.get(name) or __import__(name)
        return value


_NAMESPACE_STATE = {"peer": None, "honor": frozenset(), "cache": {}}


def _lookup_reply(reply):
    if type(reply) is not tuple or len(reply) != 2 or type(reply[0]) is not bool:
        raise ProtocolError("malformed lookup reply")
    return reply


def code_names(code, names):
    """Every name a compiled test may look up (globals and attribute names: a superset,
    which is all the lookups below need)."""
    names.update(code.co_names)
    for const in code.co_consts:
        if type(const) is types.CodeType:
            code_names(const, names)
    return names


def names_to_prefetch(names):
    """The names whose values the tests may need from the program (modules excepted:
    T imports its own)."""
    return sorted(name for name in names if name not in SAFE_MODULES or name in _BUILTIN_NAMES)


def prepare_namespace(peer, wanted, entry_point):
    """Takes the reply to the `getmany` request sent (pipelined) for `wanted`: every
    name the tests may need from the program, in one round trip. Keeps the handles
    (functions, classes, objects) and modules for the whole run and plain data for the
    first test only (the program may change its globals). Decides which of the
    program's builtin-named globals the tests see."""
    try:
        replies = peer.wait_reply() if wanted else []
    except (ProtocolError, PeerGone):
        raise
    except Exception:
        # The program answered with an exception: look names up one by one later.
        replies = None
    found = {}
    if type(replies) is list and len(replies) == len(wanted):
        for name, reply in zip(wanted, replies):
            found[name] = _lookup_reply(reply)
    honor = frozenset()
    if entry_point:
        if entry_point in _BUILTIN_NAMES:
            honor = frozenset([entry_point])
    else:
        others = [name for name, (has, _) in found.items() if has and name not in _BUILTIN_NAMES]
        if not others:
            honor = frozenset(
                name for name, (has, _) in found.items() if has and name in _BUILTIN_NAMES
            )
    cache = {
        name: reply
        for name, reply in found.items()
        if name not in _BUILTIN_NAMES or name in honor
    }
    _NAMESPACE_STATE["peer"] = peer
    _NAMESPACE_STATE["honor"] = honor
    _NAMESPACE_STATE["cache"] = cache


def forget_data_lookups():
    """After a test, plain data (and absence) looked up ahead of time may be stale: the
    program may have changed its globals. Handles and modules stay."""
    cache = _NAMESPACE_STATE["cache"]
    stale = [
        name
        for name, (has, value) in cache.items()
        if not (has and isinstance(value, (Proxy, types.ModuleType)))
    ]
    for name in stale:
        del cache[name]


# ---------------------------------------------------------------------------------------
# Sandbox primitives (ctypes; root-only steps run in the zygote and in T before it drops
# its privileges)
# ---------------------------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_GET_SECCOMP = 21
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_MODE_FILTER = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


class SetupError(Exception):
    def __init__(self, step, err):
        super().__init__(step + ": " + str(err))
        self.step = step


def _check(result, what):
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, "%s: %s" % (what, os.strerror(code)))


def unshare(flags, what):
    _check(_libc.unshare(flags), what)


def mount(source, target, fstype, flags, data, what):
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        what,
    )


# One buffer per process name, made once in the zygote: ctypes creates (and caches) an
# array type per buffer size, and doing that in every child costs ~100 page faults.
_PROCESS_NAMES = {
    name: ctypes.create_string_buffer(name.encode()[:15], 16)
    for name in ("tgrpo-zygote", "tgrpo-tester", "tgrpo-program")
}


def set_process_name(name):
    """Names the process in ps/top (tgrpo-zygote, tgrpo-tester, tgrpo-program)."""
    buffer = _PROCESS_NAMES[name]
    _libc.prctl(PR_SET_NAME, ctypes.addressof(buffer), 0, 0, 0)


def prctl(option, arg2=0, arg3=0, arg4=0, arg5=0):
    result = _libc.prctl(option, arg2, arg3, arg4, arg5)
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, "prctl(%d): %s" % (option, os.strerror(code)))
    return result


class NewPidNamespace:
    """Puts the next child of the zygote, and only that one, into a fresh pid namespace
    (as its pid 1): unshare(CLONE_NEWPID) before os.fork(), then setns() back to the
    zygote's own pid namespace, so that the next unshare is allowed again (the kernel
    refuses a second unshare(CLONE_NEWPID) while the one before is still pending) and
    T, forked later, stays out of it. U then unshares its mount and ipc namespaces
    itself. Simpler than the raw clone(2) through ctypes it replaces (which had to find
    glibc's tid field in its thread control block by scanning), and a little cheaper:
    the child starts without returning through ctypes."""

    def __init__(self):
        # Opened before pivot_root hides /proc; closed in T and U by arrange_fds.
        self.own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def fork(self):
        unshare(CLONE_NEWPID, "unshare(pid)")
        try:
            pid = os.fork()
        except OSError:
            self._restore()
            raise
        if pid:
            # The parent only: the child is the new namespace's init, and setns to an
            # ancestor namespace would fail there.
            self._restore()
        return pid

    def _restore(self):
        _check(_libc.setns(self.own, CLONE_NEWPID), "setns(own pid namespace)")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Seccomp:
    """The filter assembled by the worker (src/seccomp.rs) and handed over as raw BPF."""

    def __init__(self, program_hex):
        raw = bytes.fromhex(program_hex)
        if not raw or len(raw) % 8:
            raise ValueError("bad seccomp program")
        self.buffer = ctypes.create_string_buffer(raw, len(raw))
        self.fprog = _SockFprog(len(raw) // 8, ctypes.addressof(self.buffer))

    def install(self):
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(self.fprog))


def install_seccomp(required):
    """Installs the worker's filters. Without a sandbox they are best effort (the
    operator asked for no isolation); with one, failing to install them is fatal."""
    if SECCOMP is None:
        return
    try:
        SECCOMP.install()
    except OSError:
        if required:
            raise


def setup_slot(config):
    """Gives this zygote (and so every execution forked from it) its own mount, network
    and UTS namespaces, and a root filesystem that holds only what python needs:
    /usr read-only, a few device nodes, and an empty /work where each execution mounts
    its own tmpfs."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    if not config["sandbox"]:
        return {"namespaces": [], "note": "unsafe: no sandbox"}
    try:
        unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS, "unshare(mount, net, uts)")
    except OSError as err:
        raise SetupError("namespaces", err)
    try:
        hostname = b"sandbox"
        _check(_libc.sethostname(hostname, len(hostname)), "sethostname")
        mount(None, "/", None, MS_REC | MS_PRIVATE, None, "make / private")
        root = config["root_dir"]
        mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755", "tmpfs root")
        for directory in ("usr", "dev", "work", "oldroot"):
            os.mkdir(os.path.join(root, directory), 0o755)
        ro = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
        mount("/usr", root + "/usr", None, MS_BIND | MS_REC, None, "bind /usr")
        mount(None, root + "/usr", None, ro, None, "remount /usr read-only")
        for link in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            host = "/" + link
            if os.path.islink(host):
                os.symlink(os.readlink(host), os.path.join(root, link))
            elif os.path.isdir(host):
                os.mkdir(os.path.join(root, link), 0o755)
                mount(host, root + "/" + link, None, MS_BIND | MS_REC, None, "bind " + host)
                mount(None, root + "/" + link, None, ro, None, "remount " + host)
        for device in ("null", "zero", "full", "random", "urandom"):
            target = os.path.join(root, "dev", device)
            with open(target, "w"):
                pass
            mount("/dev/" + device, target, None, MS_BIND, None, "bind /dev/" + device)
            mount(None, target, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NOEXEC, None, "remount /dev/" + device)
        os.symlink("/work", os.path.join(root, "tmp"))
        _check(
            _libc.syscall(
                ctypes.c_long(config["sys_pivot_root"]),
                ctypes.c_char_p(root.encode()),
                ctypes.c_char_p((root + "/oldroot").encode()),
            ),
            "pivot_root",
        )
        os.chdir("/")
        _check(_libc.umount2(b"/oldroot", MNT_DETACH), "umount old root")
        os.rmdir("/oldroot")
        mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None, "remount / read-only")
    except OSError as err:
        raise SetupError("root filesystem", err)
    return {
        "namespaces": ["mount", "net", "uts"],
        "interfaces": [name for _, name in _socket.if_nameindex()],
        "root": "tmpfs with /usr read-only, /dev/{null,zero,full,random,urandom}, /work",
    }


def set_limits(limits, nproc):
    def both(kind, value):
        resource.setrlimit(kind, (value, value))

    both(resource.RLIMIT_AS, limits["memory_bytes"])
    both(resource.RLIMIT_CPU, limits["cpu_seconds"])
    both(resource.RLIMIT_FSIZE, limits["file_size_bytes"])
    both(resource.RLIMIT_NOFILE, limits["open_files"])
    both(resource.RLIMIT_NPROC, nproc)
    both(resource.RLIMIT_CORE, 0)
    both(resource.RLIMIT_MEMLOCK, 0)
    both(resource.RLIMIT_MSGQUEUE, 0)


def drop_privileges(uid):
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


# ---------------------------------------------------------------------------------------
# One execution
# ---------------------------------------------------------------------------------------


def arrange_fds(sources):
    """Makes fd i a duplicate of sources[i] and closes every other descriptor (the
    zygote's control channel above all). Sources are first moved out of the way so
    that no dup2 overwrites a source that is still needed."""
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD, 256) for fd in sources]
    for target, fd in enumerate(parked):
        os.dup2(fd, target, inheritable=False)
    os.closerange(len(sources), 1 << 20)


def result_line(fd, record):
    fd_write_all(fd, _encode_json(record).encode() + b"\n")


def tester_process(config, out_w, err_w, res_w, job_r, t_sock):
    """T: drops its privileges, installs the filter, then waits for the job. All of it
    is the same for every execution, so the zygote forks T ahead of time and this runs
    while the previous execution finishes."""
    sandbox = config["sandbox"]
    limits = config["limits"]
    set_process_name("tgrpo-tester")
    devnull = os.open("/dev/null", os.O_RDONLY)
    arrange_fds([devnull, out_w, err_w, res_w, t_sock, job_r])
    res_fd, sock_fd, job_fd = 3, 4, 5
    set_limits(dict(limits, memory_bytes=limits["tester_memory_bytes"]), 1)
    if sandbox:
        drop_privileges(config["t_uid"])
    # Dies with the zygote (set after the uid switch, which clears it).
    prctl(PR_SET_PDEATHSIG, SIGKILL)
    if os.getppid() != config["zygote_pid"]:
        os._exit(0)
    install_seccomp(required=sandbox)
    # T is short-lived and creates few cycles: collecting would only copy pages.
    gc.disable()
    raw = fd_read_frame(job_fd)
    if raw is None:
        os._exit(0)
    os.close(job_fd)
    run_tests(json.loads(raw), _socket.socket(fileno=sock_fd), res_fd)
    _flush_stdio()
    os._exit(0)


def syntax_error_of(code):
    """T's own compile of the program: the authority on syntax errors (U's claim is
    only a hint to check, since the program can send any frame)."""
    try:
        compile(code, "<program>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
        return describe(exc)
    return None


def run_tests(job, t_sock, res_fd):
    tests = job["tests"]
    fmt = job["format"]
    peer = Peer(t_sock, trusted=True, max_frame=job["max_message_bytes"])
    # U got its program straight from the zygote and runs it while the tests compile
    # here (U never sees the tests or the setup code).
    entry_point = job.get("entry_point") or ""
    # Compile everything up front (while U runs the program): a test that does not
    # compile is an error of that test alone.
    compiled = []
    names = set()
    for index, source in enumerate(tests):
        if fmt == "humaneval":
            source = source + "\n\ncheck(" + entry_point + ")\n"
        try:
            code = compile(source, "<test %d>" % index, "exec", dont_inherit=True)
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
            compiled.append((index, None, describe(exc)))
            continue
        code_names(code, names)
        compiled.append((index, code, None))
    setup = None
    if job["setup_code"].strip():
        try:
            setup = compile(job["setup_code"], "<setup>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
            result_line(res_fd, {"program": "setup code does not compile: " + describe(exc)})
            result_line(res_fd, {"done": 1})
            return
        code_names(setup, names)
    if entry_point:
        names.add(entry_point)
    # Ask for the names now: U answers as soon as the program has run, right after its
    # status, which saves a round trip.
    wanted = names_to_prefetch(names)
    try:
        if wanted:
            peer.send_request("getmany", wanted)
        status = peer.recv()
    except (PeerGone, ProtocolError) as exc:
        syntax_error = syntax_error_of(job["code"])
        if syntax_error is not None:
            result_line(res_fd, {"syntax": syntax_error})
        else:
            result_line(res_fd, {"program": "program ended before its tests: " + describe(exc)})
        result_line(res_fd, {"done": 1})
        return
    if status[0] != "ready":
        # A program that does not compile never ran, so U's harness reports it
        # honestly; but any program may also *claim* it, so T decides by compiling.
        syntax_error = syntax_error_of(job["code"])
        if syntax_error is not None:
            result_line(res_fd, {"syntax": syntax_error})
        elif (
            status[0] == "raised"
            and len(status) == 3
            and type(status[1]) is str
            and type(status[2]) is str
        ):
            detail = status[1][:100] + (": " + status[2][:500] if status[2] else "")
            result_line(res_fd, {"program": "program raised " + detail})
        else:
            result_line(res_fd, {"program": "program sent a malformed status"})
        result_line(res_fd, {"done": 1})
        return

    namespace = TestNamespace()
    namespace["__builtins__"] = builtins
    namespace["__name__"] = "__main__"
    try:
        prepare_namespace(peer, wanted, entry_point)
        if setup is not None:
            exec(setup, namespace)
    except BaseException as exc:
        result_line(res_fd, {"program": "setup code raised " + describe(exc)})
        result_line(res_fd, {"done": 1})
        return

    for index, code, compile_error in compiled:
        if peer.closed():
            result_line(res_fd, {"t": index, "o": "n", "m": "program exited before this test"})
            continue
        if code is None:
            result_line(res_fd, {"t": index, "o": "e", "m": compile_error})
            continue
        try:
            exec(code, namespace)
            outcome = {"t": index, "o": "p"}
        except AssertionError as exc:
            outcome = {"t": index, "o": "f", "m": first_line(exc)}
        except PeerGone:
            outcome = {"t": index, "o": "e", "m": "program exited during this test"}
        except ProtocolError as exc:
            outcome = {"t": index, "o": "e", "m": "protocol violation: " + str(exc)}
        except RecursionError:
            outcome = {"t": index, "o": "e", "m": "RecursionError"}
        except BaseException as exc:
            outcome = {"t": index, "o": "e", "m": describe(exc)}
        result_line(res_fd, outcome)
        forget_data_lookups()
    # The zygote ends the execution as soon as it reads "done": output first.
    _flush_stdio()
    result_line(res_fd, {"done": 1})


def program_process(config, out_w, err_w, u_sock, code_r, work_dir):
    """U: pid 1 of fresh pid, mount and ipc namespaces (in a sandbox). Sandboxes itself,
    waits for the program, runs it, then serves T's calls until the channel closes.
    Nothing untrusted runs before the sandbox is complete."""
    sandbox = config["sandbox"]
    limits = config["limits"]
    set_process_name("tgrpo-program")
    devnull = os.open("/dev/null", os.O_RDONLY)
    arrange_fds([devnull, out_w, err_w, u_sock, code_r])
    code_fd = 4
    if sandbox:
        # The pid namespace came with the fork; mount and ipc namespaces are U's own
        # too (created here, while U is still root and runs nothing untrusted).
        unshare(CLONE_NEWNS | CLONE_NEWIPC, "unshare(mount, ipc)")
        mount(
            "tmpfs",
            "/work",
            "tmpfs",
            MS_NOSUID | MS_NODEV,
            "size=%d,mode=0700,uid=%d,gid=%d"
            % (limits["workdir_bytes"], config["u_uid"], config["u_uid"]),
            "tmpfs /work",
        )
    os.setsid()
    os.chdir(work_dir)
    set_limits(limits, limits["processes"])
    if sandbox:
        drop_privileges(config["u_uid"])
    # Dies with the zygote; as pid 1 of its namespace, taking every descendant with it.
    prctl(PR_SET_PDEATHSIG, SIGKILL)
    if os.getppid() not in (0, config["zygote_pid"]):
        os._exit(0)
    install_seccomp(required=sandbox)
    os.environ.clear()
    sys.argv = [""]
    sock = _socket.socket(fileno=3)
    peer = Peer(sock, trusted=False, max_frame=1 << 62)
    cpu_frame = fd_read_frame(code_fd)
    raw = fd_read_frame(code_fd)
    if cpu_frame is None or raw is None:
        os._exit(0)
    os.close(code_fd)
    cpu_seconds = int(cpu_frame)
    code = raw.decode("utf-8", "surrogateescape")
    # The CPU limit depends on the job's time limit; lowering a limit needs no privilege.
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    cpu_seconds = min(cpu_seconds, hard) if hard >= 0 else cpu_seconds
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    peer.namespace = namespace
    try:
        exec(compile(code, "<program>", "exec", dont_inherit=True), namespace)
        status = ["ready"]
    except BaseException as exc:
        status = ["raised", type(exc).__name__, first_line(exc)]
    _flush_stdio()
    try:
        peer.send(status)
    except PeerGone:
        os._exit(0)
    peer.serve_forever()
    _flush_stdio()
    os._exit(0)


class Capture:
    """Keeps the first `cap` bytes of a stream and counts the rest."""

    def __init__(self, cap):
        self.cap = cap
        self.kept = bytearray()
        self.dropped = 0

    def feed(self, view):
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += view[:room]
            self.dropped += max(0, len(view) - room)
        else:
            self.dropped += len(view)


# Every byte of a job (program, tests, results, output) passes through the zygote only
# in these buffers, which are zeroed after the job: the zygote's memory is what the next
# programs are forked from, and no program may find another one's tests or code in it.
# SCRATCH, the one every byte passes through, is not even mapped in the children
# (MADV_DONTFORK): so fork does not share its pages and the zygote's writes to it cost
# no copy-on-write faults.
SCRATCH = mmap.mmap(-1, 1 << 16, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
SCRATCH.madvise(mmap.MADV_DONTFORK)
_ZEROS = bytes(len(SCRATCH))


def scrub(*buffers):
    for buffer in buffers:
        if len(buffer) == len(_ZEROS):
            buffer[:] = _ZEROS
        else:
            buffer[:] = bytes(len(buffer))


def read_into_scratch(fd):
    """Reads what is available on `fd` into SCRATCH; returns a view of it (empty at
    EOF), or None when nothing is available."""
    view = memoryview(SCRATCH)
    try:
        count = os.readv(fd, [view])
    except BlockingIOError:
        return None
    return view[:count]


def pump(source, sink, length):
    """Moves a `length`-byte frame from `source` to `sink` through SCRATCH, framed again
    on `sink`. A sink that is gone (its reader died) is skipped, but the frame is still
    consumed so that the control channel stays in step."""
    view = memoryview(SCRATCH)
    alive = True
    try:
        fd_write_all(sink, HEADER.pack(length))
    except OSError:
        alive = False
    while length:
        count = os.readv(source, [view[: min(length, len(view))]])
        if count == 0:
            raise EOFError("control channel closed mid-frame")
        if alive:
            try:
                fd_write_all(sink, view[:count])
            except OSError:
                alive = False
        length -= count
    return alive


def read_length(fd):
    head = fd_read_exact(fd, 4)
    if head is None:
        return None
    return HEADER.unpack(head)[0]


def write_buffer_frame(fd, buffer):
    fd_write_all(fd, HEADER.pack(len(buffer)))
    fd_write_all(fd, memoryview(buffer))


def _try_reap(pid):
    """The exit status of `pid` if it has exited, reaping it; None if it still runs."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return status if reaped == pid else None


# Killed processes not yet reaped. Tearing down a pid namespace and a mount namespace
# takes the kernel an RCU grace period (up to milliseconds): the zygote reports the
# result without waiting for that, reaps in the background while idle, and waits for the
# rest only before the next program starts. A pid cannot be reused before it is reaped.
DYING = []


def reap_dying(block):
    """Reaps the killed processes that have finished exiting (all of them if block)."""
    still = []
    for pid in DYING:
        try:
            reaped, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            continue
        if reaped == 0:
            still.append(pid)
    DYING[:] = still


def read_job(ctl_in):
    """The next job frame; while killed processes are still exiting, reaps them as they
    finish instead of blocking (so none lingers as a zombie while the slot is idle)."""
    while DYING:
        ready, _, _ = select.select([ctl_in], [], [], 0.05)
        reap_dying(block=False)
        if ready:
            break
    return fd_read_frame(ctl_in)


def _kill(pid):
    try:
        os.kill(pid, SIGKILL)
    except ProcessLookupError:
        pass


class Pending:
    """An execution forked ahead of its job: T and U set up and waiting."""

    __slots__ = ("t_pid", "u_pid", "out_r", "err_r", "res_r", "job_w", "code_w", "work_dir")

    def __init__(self, t_pid, u_pid, out_r, err_r, res_r, job_w, code_w, work_dir):
        self.t_pid = t_pid
        self.u_pid = u_pid
        self.out_r = out_r
        self.err_r = err_r
        self.res_r = res_r
        self.job_w = job_w
        self.code_w = code_w
        self.work_dir = work_dir


def _child(role, run):
    try:
        run()
    except BaseException as exc:
        try:
            os.write(2, ("%s setup failed: %s\n" % (role, describe(exc))).encode())
        finally:
            os._exit(70)
    os._exit(70)


def prefork(config):
    """Forks T, then U into fresh pid/mount/ipc namespaces: both are children of
    the zygote, which reaps them itself (neither pid can be reused before it kills
    them)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    job_r, job_w = os.pipe()
    code_r, code_w = os.pipe()
    t_sock, u_sock = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    t_fd, u_fd = t_sock.detach(), u_sock.detach()
    work_dir = "/work"
    if not config["sandbox"]:
        import tempfile

        work_dir = tempfile.mkdtemp(prefix="tgrpo-exec-")
    t_pid = os.fork()
    if t_pid == 0:
        _child("tester", lambda: tester_process(config, out_w, err_w, res_w, job_r, t_fd))
    if config["sandbox"]:
        u_pid = PID_NAMESPACE.fork()
    else:
        u_pid = os.fork()
    if u_pid == 0:
        _child(
            "program",
            lambda: program_process(config, out_w, err_w, u_fd, code_r, work_dir),
        )
    for fd in (out_w, err_w, res_w, job_r, code_r, t_fd, u_fd):
        os.close(fd)
    return Pending(t_pid, u_pid, out_r, err_r, res_r, job_w, code_w, work_dir)


def start_job(ctl_in, pending, header):
    """Hands a job to a pre-forked execution straight from the control channel: the
    CPU limit and the program to U, the whole job (tests included) to T only. Returns
    the start time."""
    started = time.monotonic()
    try:
        fd_write_frame(pending.code_w, b"%d" % header["cpu_seconds"])
    except OSError:
        pass
    for sink in (pending.code_w, pending.job_w):
        length = read_length(ctl_in)
        if length is None:
            raise EOFError("control channel closed mid-job")
        # A reader that died before its job is reported as not finished below.
        pump(ctl_in, sink, length)
        os.close(sink)
    return started


def finish_job(config, pending, started, timeout_s):
    """Collects the outcome of a started job and ends the execution (the killed
    processes are reaped in the background, see DYING)."""
    deadline = started + timeout_s
    t_pid, u_pid = pending.t_pid, pending.u_pid
    out_r, err_r, res_r = pending.out_r, pending.err_r, pending.res_r
    cap = config["limits"]["output_bytes"]
    out, err = Capture(cap), Capture(cap)
    results = bytearray()
    for fd in (out_r, err_r, res_r):
        os.set_blocking(fd, False)
    poller = select.poll()
    streams = {out_r: out, err_r: err}
    for fd in (out_r, err_r, res_r):
        poller.register(fd, select.POLLIN)
    open_fds = {out_r, err_r, res_r}
    timed_out = False
    while res_r in open_fds:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        for fd, _ in poller.poll(max(1, int(remaining * 1000))):
            data = read_into_scratch(fd)
            if data is None:
                continue
            if not data:
                poller.unregister(fd)
                open_fds.discard(fd)
                continue
            if fd == res_r:
                results += data
                if len(results) > (1 << 24):
                    timed_out = True
                    break
            else:
                streams[fd].feed(data)
        if timed_out:
            break
        if results.find(b'{"done":1}') >= 0:
            break
    elapsed_ms = int((time.monotonic() - started) * 1000)
    # A program that died on its own (RLIMIT_CPU's SIGXCPU, a crash) is reaped now so
    # that its status can be reported.
    u_status = _try_reap(u_pid)
    # End the execution: U first (pid 1 of its namespace: every descendant dies with it),
    # then T. Both are the zygote's own children and unreaped until here, so neither
    # pid can have been reused.
    if u_status is None:
        if not config["sandbox"]:
            try:
                os.killpg(u_pid, SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _kill(u_pid)
        DYING.append(u_pid)
    _kill(t_pid)
    DYING.append(t_pid)
    # Take what is in the pipes now. U flushes its output before every reply and T
    # before "done", so everything written during the tests is there; whatever the
    # dying processes might still write belongs to no test.
    for fd in (out_r, err_r):
        while fd in open_fds:
            data = read_into_scratch(fd)
            if not data:
                break
            streams[fd].feed(data)
    for fd in (out_r, err_r, res_r):
        os.close(fd)
    if not config["sandbox"]:
        import shutil

        shutil.rmtree(pending.work_dir, ignore_errors=True)
    outcome = {
        "timed_out": timed_out,
        "elapsed_ms": elapsed_ms,
        "program_status": u_status,
        "stdout_dropped": out.dropped,
        "stderr_dropped": err.dropped,
    }
    return outcome, results, out.kept, err.kept


# ---------------------------------------------------------------------------------------
# The zygote's main loop
# ---------------------------------------------------------------------------------------

SECCOMP = None
PID_NAMESPACE = None


def main():
    global SECCOMP, PID_NAMESPACE
    ctl_in = os.dup(0)
    ctl_out = os.dup(1)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = open(1, "w", closefd=False)
    raw = fd_read_frame(ctl_in)
    if raw is None:
        return
    config = json.loads(raw)
    config["zygote_pid"] = os.getpid()
    set_process_name("tgrpo-zygote")
    try:
        SECCOMP = Seccomp(config["seccomp"]) if config["seccomp"] else None
        if config["sandbox"]:
            PID_NAMESPACE = NewPidNamespace()
        isolation = setup_slot(config)
    except SetupError as err:
        fd_write_frame(ctl_out, json.dumps({"ok": False, "step": err.step, "error": str(err)}).encode())
        return
    except OSError as err:
        fd_write_frame(ctl_out, json.dumps({"ok": False, "step": "setup", "error": str(err)}).encode())
        return
    # The compiler's AST types are created on the first compile() of a process: do it
    # here, once, rather than in every tester and program (about a third of what an
    # execution used to cost).
    compile("pass", "<warm-up>", "exec", dont_inherit=True)
    # Everything imported from here on is shared copy-on-write by every execution; do
    # not let the collector touch (and so copy) those pages in each child.
    gc.collect()
    gc.freeze()
    fd_write_frame(ctl_out, json.dumps({"ok": True, "isolation": isolation}).encode())
    pending = prefork(config)
    while True:
        # Per job: a small header (limits), the program (for U), the job (for T).
        raw = read_job(ctl_in)
        if raw is None:
            # The worker closed the channel: end the waiting execution and reap every
            # child before exiting, so that none is left as a zombie for init.
            for pid in (pending.u_pid, pending.t_pid):
                _kill(pid)
                DYING.append(pid)
            reap_dying(block=True)
            return
        header = json.loads(raw)
        # The previous execution must be gone entirely (its namespace init reaped, so
        # every descendant too) before this program runs: the slot's network namespace
        # is shared, and an abstract socket of a dying program must not meet the next
        # one. This waits only for what remains of the kernel's teardown.
        reap_dying(block=True)
        started = start_job(ctl_in, pending, header)
        # The next execution is forked and sets itself up while this one runs. The
        # job's bytes are only in the kernel's pipes and in SCRATCH at this point.
        scrub(SCRATCH)
        following = prefork(config)
        outcome, results, stdout, stderr = finish_job(
            config, pending, started, header["timeout_s"]
        )
        fd_write_frame(ctl_out, json.dumps(outcome).encode())
        for buffer in (results, stdout, stderr):
            write_buffer_frame(ctl_out, buffer)
        scrub(results, stdout, stderr, SCRATCH)
        pending = following
        reap_dying(block=False)


if __name__ == "__main__":
    main()
