"""llama.cpp's RPC backend (ggml-rpc): a model split across machines.

Every built file carries the backend as one more loadable library beside the
CPU variants. A file started with `--rpc-server` lends this machine's CPU to
other files over ggml's RPC protocol (`serve`); a file started with `--rpc
host:port,...` registers those workers as devices (`add_workers`) and llama.cpp
then splits the model's layers over them, by their free memory unless a tensor
split is given.

The protocol has no authentication and no encryption: anyone who can reach a
worker's port can make it allocate memory and run computations. Workers bind
127.0.0.1 unless told otherwise, and the CLI says so aloud when they are not.

ggml-rpc aborts the whole process when a worker cannot be reached or stops
answering. So:
* before a worker is registered, `probe` connects to it and performs the
  protocol's HELLO handshake itself: an unreachable address, a port that is not
  a worker, or a worker of another protocol version is one line naming it;
* while a model runs, `install_abort_hook` intercepts ggml's abort when it comes
  from the RPC client (a worker lost mid-run): the thread that would abort is
  parked instead, and the listeners (the engine) fail what was running and say
  why, so the server keeps answering /health honestly. The engine's own thread,
  waiting on that worker, stays blocked; a restart is needed to use the model
  again, and /health says that too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamapack.runtime.llama.cpu import search_directories
from llamapack.runtime.llama.ggml import ggml as ggml_api

# ggml-rpc.h / ggml-rpc.cpp of the pinned llama.cpp: the protocol this engine speaks.
PROTOCOL_MAJOR = 7
_HELLO = 14  # RPC_CMD_HELLO: fixed across versions so that any two can say hello
_CAPS_SIZE = 24  # RPC_CONN_CAPS_SIZE
_HELLO_REPLY = struct.Struct(f"<BBBB{_CAPS_SIZE}s")  # major, minor, patch, padding, caps
PROBE_TIMEOUT = 10.0  # seconds to connect and shake hands
DEFAULT_PORT = 50052  # llama.cpp's rpc-server default

_AddServer = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
_StartServer = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)
)
_AbortCallback = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_SIZE_P = ctypes.POINTER(ctypes.c_size_t)
_GetMemory = ctypes.CFUNCTYPE(None, ctypes.c_void_p, _SIZE_P, _SIZE_P)
_GET_MEMORY_SLOT = 2  # ggml_backend_device_i: get_name, get_description, get_memory, ...
_CPU_DEVICE = 0  # GGML_BACKEND_DEVICE_TYPE_CPU


class RpcError(Exception):
    """An RPC worker or the RPC backend cannot be used; the message is one line."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoints(value: str) -> list[Endpoint]:
    """`host:port,host:port` (an IPv6 host in brackets), each once, in order."""
    endpoints: list[Endpoint] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        host, colon, port = item.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RpcError(f"--rpc {item}: not HOST:PORT")
        endpoint = Endpoint(host.strip("[]"), int(port))
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    if not endpoints:
        raise RpcError("--rpc needs at least one HOST:PORT")
    return endpoints


def probe(endpoint: Endpoint, timeout: float = PROBE_TIMEOUT) -> None:
    """Connect to a worker and shake hands as ggml's client does, or raise RpcError."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as connection:
            connection.sendall(bytes([_HELLO]) + struct.pack("<Q", _CAPS_SIZE) + bytes(_CAPS_SIZE))
            size = struct.unpack("<Q", _receive(connection, 8))[0]
            if size != _HELLO_REPLY.size:
                raise RpcError(f"{endpoint} is not a llama.cpp RPC worker (no RPC handshake)")
            major, minor, patch, _, _ = _HELLO_REPLY.unpack(_receive(connection, size))
    except RpcError:
        raise
    except TimeoutError:
        raise RpcError(f"cannot reach the RPC worker {endpoint}: no answer in {timeout:.0f} s") from None
    except OSError as exc:
        if isinstance(exc, ConnectionError) and not isinstance(exc, ConnectionRefusedError):
            raise RpcError(f"{endpoint} is not a llama.cpp RPC worker (it closed the handshake)") from None
        reason = exc.strerror or str(exc)
        raise RpcError(f"cannot reach the RPC worker {endpoint}: {reason}") from None
    if major != PROTOCOL_MAJOR:
        raise RpcError(
            f"the RPC worker {endpoint} speaks protocol {major}.{minor}.{patch}, this file "
            f"{PROTOCOL_MAJOR}.x: run the same llamapack (or llama.cpp) version on every machine"
        )


def _receive(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    return data


# -- the backend library


def _library_name() -> str:
    return "ggml-rpc.dll" if sys.platform == "win32" else "libggml-rpc.so"


_registry: int | None = None
_registry_lock = threading.Lock()


def registry() -> int:
    """ggml's RPC backend registry, loaded once (after model.init_backend)."""
    global _registry
    with _registry_lock:
        if _registry is None:
            ggml = ggml_api()
            reg = ggml.ggml_backend_reg_by_name(b"RPC")
            if not reg:
                path = next(
                    (d / _library_name() for d in search_directories() if (d / _library_name()).is_file()),
                    None,
                )
                if path is None:
                    raise RpcError("this file's engine was built without llama.cpp's RPC backend")
                reg = ggml.ggml_backend_load(os.fsencode(path))
                if not reg:
                    raise RpcError(f"llama.cpp cannot load its RPC backend {path}")
            _registry = int(reg)
        return _registry


def _function(name: str, prototype: type) -> Callable[..., object]:
    address = ggml_api().ggml_backend_reg_get_proc_address(registry(), name.encode())
    if not address:
        raise RpcError(f"this llama.cpp's RPC backend has no {name}")
    function: Callable[..., object] = prototype(address)
    return function


def add_workers(endpoints: Sequence[Endpoint]) -> list[str]:
    """Register each worker (checked first with `probe`); their device names. From
    here on a lost worker is reported, not an abort (`install_abort_hook`)."""
    install_abort_hook()
    for endpoint in endpoints:
        probe(endpoint)
    add_server = _function("ggml_backend_rpc_add_server", _AddServer)
    ggml = ggml_api()
    names = []
    for endpoint in endpoints:
        reg = add_server(str(endpoint).encode())
        if not reg:
            raise RpcError(f"the RPC worker {endpoint} offers no device")
        ggml.ggml_backend_register(reg)
        for index in range(ggml.ggml_backend_reg_dev_count(reg)):
            device = ggml.ggml_backend_reg_dev_get(reg, index)
            names.append((ggml.ggml_backend_dev_name(device) or b"").decode())
    return names


def check_bind(endpoint: Endpoint) -> None:
    """The worker's port can be bound (ggml's server would only print a line and return)."""
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as trial:
            trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            trial.bind((endpoint.host, endpoint.port))
    except OSError as exc:
        raise RpcError(f"cannot listen on {endpoint}: {exc.strerror or exc}") from None


def serve(endpoint: Endpoint, threads: int, memory: int | None = None, cache_dir: Path | None = None) -> None:
    """Serve this machine's CPU as an RPC worker until the process ends: ggml's
    server runs in a thread of its own, so that the main thread stays free for
    signals (a C call never returns to Python to run them). `memory` (bytes) caps
    the memory the worker reports, which is what a main process splits layers by."""
    check_bind(endpoint)
    start_server = _function("ggml_backend_rpc_start_server", _StartServer)
    ggml = ggml_api()
    device = ggml.ggml_backend_dev_by_type(_CPU_DEVICE)
    if not device:
        raise RpcError("no CPU device to serve")
    if memory is not None:
        _report_at_most(device, memory)
    devices = (ctypes.c_void_p * 1)(device)
    cache = os.fsencode(cache_dir) if cache_dir is not None else None
    ended = threading.Event()

    def run() -> None:
        try:
            start_server(str(endpoint).encode(), cache, threads, 1, devices)
        finally:
            ended.set()

    threading.Thread(target=run, name="llamapack-rpc-server", daemon=True).start()
    while not ended.wait(0.5):  # wakes for signals; ggml's server returns only on failure
        pass
    raise RpcError(f"the RPC server on {endpoint} stopped (see its message above)")


_memory_hook: object = None  # kept alive as long as ggml may call it


def _report_at_most(device: int, limit: int) -> None:
    """llama.cpp's rpc-server once had --mem; this one's server reports each device's
    own memory. The CPU device of this process reports at most `limit` instead: its
    get_memory entry is swapped for one that caps the answer (the server asks the
    device that its backend names, the CPU backend's own, so only that entry does)."""
    global _memory_hook
    entries = (ctypes.c_void_p * (_GET_MEMORY_SLOT + 1)).from_address(device)
    address = entries[_GET_MEMORY_SLOT]
    if not address:
        raise RpcError("this ggml's CPU device reports no memory to cap")
    original = _GetMemory(address)

    def get_memory(dev: int, free: Any, total: Any) -> None:
        original(dev, free, total)
        free[0], total[0] = min(free[0], limit), min(total[0], limit)

    _memory_hook = _GetMemory(get_memory)
    entries[_GET_MEMORY_SLOT] = ctypes.cast(_memory_hook, ctypes.c_void_p).value


# -- a worker lost mid-run


_listeners: list[Callable[[str], None]] = []
_hook: object = None  # the ctypes callback, kept alive as long as ggml may call it


def on_worker_lost(listener: Callable[[str], None]) -> None:
    _listeners.append(listener)


def install_abort_hook() -> None:
    """Park a thread that ggml-rpc would abort the process from, and tell the listeners.
    Any other abort (a bug) still prints its message and aborts, as ggml does."""
    global _hook
    if _hook is not None:
        return

    def on_abort(message: bytes | None) -> None:
        text = (message or b"").decode(errors="replace").strip()
        if "ggml-rpc" not in text:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
            return  # ggml then aborts
        reason = text.partition(": ")[2] or text
        for listener in list(_listeners):
            with contextlib.suppress(Exception):  # a listener must not bring back the abort
                listener(f"an RPC worker was lost: {reason}")
        threading.Event().wait()  # never returns: the process lives on without this thread

    _hook = _AbortCallback(on_abort)
    ggml_api().ggml_set_abort_callback(_hook)
