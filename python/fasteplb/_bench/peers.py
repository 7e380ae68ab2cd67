"""The serving engines' own EPLB planners, loaded from their published wheels for comparison.

Only the pure-Python policy files are used: they are extracted from the pinned wheels (fetched
with ``pip download --no-deps``) into a cache directory and executed by path under private
module names. The engines themselves are never installed or imported: a policy file that tries
to import its engine fails to load (``PeerUnavailable``), and nothing is left in
``sys.modules`` under the engines' names or the private ones.

Peers (``PEERS``):

- ``"vllm"``: vLLM's ``DefaultEplbPolicy.rebalance_experts`` (numpy port of DeepSeek's greedy);
- ``"sglang"``: SGLang's ``deepseek`` algorithm (its copy of DeepSeek's eplb.py), hierarchical
  when ``num_groups % num_nodes == 0`` as SGLang's ``auto`` choice;
- ``"sglang-vec"``: SGLang's ``deepseek_vec`` algorithm (time-aware replication over a
  [T, L, E] load window), hierarchical under the same rule.

``load(name)`` returns a ``Peer``: ``peer(weight, num_replicas, num_groups, num_nodes,
num_gpus)`` gives phy2log as an int64 tensor [L, P] and ``peer.version`` / ``peer.source`` name
what ran. ``load(name, root=DIR)`` uses policy files laid out as in the wheels under DIR (an
unpacked wheel or a stand-in) and never downloads.

Cache layout (``default_cache_dir()``)::

    wheels/<dist>-<version>-*.whl                 downloaded wheels (any platform tag)
    <dist>-<version>/<path inside the wheel>.py   the extracted policy files
"""

from __future__ import annotations
import __future__

import ast
import contextlib
import glob
import hashlib
import importlib.abc
import importlib.util
import itertools
import linecache
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import types
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

__all__ = [
    "PEERS",
    "SGLANG_VERSION",
    "VLLM_VERSION",
    "Peer",
    "PeerUnavailable",
    "available",
    "default_cache_dir",
    "definition",
    "engine_files",
    "fetch",
    "load",
]

VLLM_VERSION = "0.33.0"
SGLANG_VERSION = "0.5.23"
PEERS = ("vllm", "sglang", "sglang-vec")

_ENV_CACHE = "FASTEPLB_PEERS_CACHE"
_ENGINES = ("vllm", "sglang")  # top-level names a policy file must never import
_VLLM_DIR = "vllm/distributed/eplb/policy/"
_SGLANG_DIR = "sglang/srt/eplb/eplb_algorithms/"


@dataclass(frozen=True)
class _Dist:
    name: str
    version: str
    # Wheel member -> sha256 of the pinned release's file (identical in every platform wheel).
    files: dict[str, str] = field(default_factory=dict)


_DISTS = {
    "vllm": _Dist(
        "vllm",
        VLLM_VERSION,
        {
            _VLLM_DIR + "abstract.py": (
                "2b3ed2766fb033cc410c08fbce034b4ef4272b5e333ff79948e2147ce952b702"
            ),
            _VLLM_DIR + "default.py": (
                "4b77c5b6075694b882d3f53ca6fa93aa9b5beb823920a69bb9b7333c7ef27270"
            ),
        },
    ),
    "sglang": _Dist(
        "sglang",
        SGLANG_VERSION,
        {
            _SGLANG_DIR + "deepseek.py": (
                "7c42cd0cb0f03da5dc68d13d38833f2986625ac96813dae4853521341cc5219c"
            ),
            _SGLANG_DIR + "deepseek_vec.py": (
                "573cb921aaee6b5560547ce304d65a555fefb752d8d412ed273ecf9b307bd359"
            ),
        },
    ),
}


# Engine files around the policies: the callers, loaders and plugin machinery that the
# integration tests (tests/test_integrations_*.py) run against ``fasteplb.integrations``. Pinned
# like the policy files and extracted beside them from the same cached wheel by
# ``engine_files``; ``fetch`` and ``load`` never need them.
_CONTEXT = {
    "vllm": {
        "vllm/distributed/eplb/__init__.py": (
            "1b9c2ee22abb5888c354c5aa01f0944f253e5e24e135d019778398bbe495a628"
        ),
        _VLLM_DIR + "__init__.py": (
            "daeb266c88442832b1ab8c8c4cc064891b38b9e9ba00aea324f926c87dc6d37e"
        ),
        "vllm/distributed/eplb/eplb_state.py": (
            "b52e8fe96b83184aaef04e2303cf1de24056bcceed9fc50803351da970cb8b55"
        ),
        "vllm/distributed/eplb/async_worker.py": (
            "b1b10db5181fb5a704c8656a6a4a35af7e79b8fb4721183b8f2548fb72c5b042"
        ),
        "vllm/plugins/__init__.py": (
            "06942d64e526c2c7407265e1903d625c4d2118d8d7fc39c616b1cc6aa6fc2c8f"
        ),
        "vllm/envs.py": "a9f665c49da1d8852c19a192f5d5848f0e38f4f56c76b5fafe0c17398945b357",
        "vllm/config/parallel.py": (
            "61f4e257fbe61145ddac89740952d0bcceed80f9a0fc48eb653e549d3738007a"
        ),
    },
    "sglang": {
        _SGLANG_DIR + "__init__.py": (
            "69f58f4c8c7e6eb9dc70dd124cc9b3564dbabfda6318d1b66d658822ccbdf323"
        ),
        _SGLANG_DIR + "elasticity_aware.py": (
            "c7a69bf06fc209a5279050e623a25dcd0a9a3485f21135b5a02b02c783cfc4a6"
        ),
        "sglang/srt/plugins/__init__.py": (
            "3a975a73f1a7887e68c81ea7a2530250597ac8ae978efc0b0f70f038a99a3164"
        ),
        "sglang/srt/plugins/hook_registry.py": (
            "0144d8c3e5ee294322894f88b8ad3bd49edad15c124650e4e834d0366815dc7d"
        ),
        "sglang/srt/eplb/expert_location.py": (
            "40c0a2b679f0093ef4b3dbf47a10eb25f6c59207c2c6db9f65629d7e053b6887"
        ),
        "sglang/srt/eplb/expert_distribution.py": (
            "c5f7314612cbaabb10edf5b5dd31da5b6865aa07e00aebf1046474679d82f5f0"
        ),
    },
}


@dataclass(frozen=True)
class _Spec:
    dist: str
    files: tuple[str, ...]  # wheel members to execute, dependencies first; the last is the policy
    what: str  # the engine object the planner calls


_SPECS = {
    "vllm": _Spec(
        "vllm",
        (_VLLM_DIR + "abstract.py", _VLLM_DIR + "default.py"),
        "DefaultEplbPolicy.rebalance_experts",
    ),
    "sglang": _Spec("sglang", (_SGLANG_DIR + "deepseek.py",), "deepseek.rebalance_experts"),
    "sglang-vec": _Spec(
        "sglang", (_SGLANG_DIR + "deepseek_vec.py",), "deepseek_vec.rebalance_experts"
    ),
}


class PeerUnavailable(RuntimeError):
    """A peer planner cannot be fetched or loaded; the message says why and how to fix it."""


# --------------------------------------------------------------------------- cache and fetch


def default_cache_dir() -> str:
    """``$FASTEPLB_PEERS_CACHE``, else ``~/.cache/fasteplb/peers``."""
    env = os.environ.get(_ENV_CACHE)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(os.path.expanduser("~"), ".cache", "fasteplb", "peers")


def _cache(cache_dir: Optional[str]) -> str:
    return os.path.abspath(os.path.expanduser(cache_dir)) if cache_dir else default_cache_dir()


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _check_name(name: str) -> _Spec:
    if name not in _SPECS:
        raise ValueError(f"unknown peer {name!r}; expected one of {', '.join(PEERS)}")
    return _SPECS[name]


def _wheel(dist: _Dist, wheels: str) -> Optional[str]:
    found = sorted(glob.glob(os.path.join(wheels, f"{dist.name}-{dist.version}-*.whl")))
    return found[0] if found else None


def _fix_hint(dist: _Dist, cache: str) -> str:
    wheels = os.path.join(cache, "wheels")
    return (
        f"fix: run fasteplb._bench.peers.fetch() where PyPI is reachable, or put a {dist.name} "
        f"{dist.version} wheel (any platform tag: only its pure-Python policy files are used) "
        f"in {wheels} (pip download --no-deps --only-binary=:all: "
        f"{dist.name}=={dist.version} -d {wheels}), or pass root=<dir with the policy files "
        "laid out as in the wheel>"
    )


def _download(dist: _Dist, cache: str, timeout: float) -> str:
    wheels = os.path.join(cache, "wheels")
    os.makedirs(wheels, exist_ok=True)
    requirement = f"{dist.name}=={dist.version}"
    with tempfile.TemporaryDirectory(prefix=".download-", dir=wheels) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-d", tmp, requirement,
        ]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PeerUnavailable(
                f"pip download {requirement} took longer than {timeout:.0f} s; "
                + _fix_hint(dist, cache)
            ) from None
        except OSError as exc:
            raise PeerUnavailable(
                f"cannot run pip to download {requirement}: {exc}; " + _fix_hint(dist, cache)
            ) from None
        got = _wheel(dist, tmp)
        if done.returncode != 0 or got is None:
            tail = "\n".join((done.stderr or done.stdout or "").strip().splitlines()[-5:])
            raise PeerUnavailable(
                f"pip download {requirement} failed (exit {done.returncode}; offline?):\n"
                f"{tail}\n" + _fix_hint(dist, cache)
            )
        target = os.path.join(wheels, os.path.basename(got))
        os.replace(got, target)
    return target


def _extract(dist: _Dist, wheel: str, out: str) -> None:
    try:
        with zipfile.ZipFile(wheel) as z:
            members = {member: z.read(member) for member in dist.files if member in z.NameToInfo}
    except (OSError, zipfile.BadZipFile) as exc:
        raise PeerUnavailable(
            f"cannot read the wheel {wheel}: {exc}; delete it and fetch again"
        ) from None
    for member, digest in dist.files.items():
        if member not in members:
            raise PeerUnavailable(
                f"{wheel} has no {member}: not a {dist.name} {dist.version} wheel?"
            )
        if hashlib.sha256(members[member]).hexdigest() != digest:
            raise PeerUnavailable(
                f"{member} in {wheel} does not match the pinned {dist.name} {dist.version} "
                "file (sha256 differs); delete the wheel and fetch again"
            )
    try:
        for member, data in members.items():
            path = os.path.join(out, *member.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".part-", dir=os.path.dirname(path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    except OSError as exc:
        raise PeerUnavailable(
            f"cannot write the policy files into {out}: {exc}; pick a writable cache_dir "
            f"(or set {_ENV_CACHE})"
        ) from None


def _extracted(dist: _Dist, out: str) -> bool:
    for member, digest in dist.files.items():
        path = os.path.join(out, *member.split("/"))
        if not os.path.isfile(path) or _sha256(path) != digest:
            return False
    return True


def _ensure(dist: _Dist, cache: str, download: bool, timeout: float) -> str:
    """The directory holding the dist's verified policy files in the wheel layout."""
    out = os.path.join(cache, f"{dist.name}-{dist.version}")
    if _extracted(dist, out):
        return out
    wheel = _wheel(dist, os.path.join(cache, "wheels"))
    if wheel is None:
        if not download:
            raise PeerUnavailable(
                f"{dist.name} {dist.version} is not in the cache {cache} and download=False; "
                + _fix_hint(dist, cache)
            )
        wheel = _download(dist, cache, timeout)
    _extract(dist, wheel, out)
    return out


_fetch_lock = threading.Lock()


def _roots(
    cache_dir: Optional[str], download: bool, peers: tuple[str, ...], timeout: float
) -> dict[str, str]:
    cache = _cache(cache_dir)
    roots: dict[str, str] = {}
    with _fetch_lock:
        for name in peers:
            dist = _check_name(name).dist
            if dist not in roots:
                roots[dist] = _ensure(_DISTS[dist], cache, download, timeout)
    return roots


def fetch(
    cache_dir: Optional[str] = None,
    *,
    download: bool = True,
    peers: tuple[str, ...] = PEERS,
    timeout: float = 1800.0,
) -> dict[str, str]:
    """Make the pinned policy files of ``peers`` present in the cache.

    Downloads a missing wheel with ``pip download --no-deps`` (vLLM's is ~340 MB; ``timeout``
    seconds per wheel) unless ``download=False``, then extracts and checks the policy files.
    The wheels stay in ``<cache>/wheels``; the extracted ``<cache>/<dist>-<version>`` trees
    are all that ``load`` reads.

    Returns:
        {peer name: path of its policy file}

    Raises:
        PeerUnavailable: a wheel is missing and cannot be downloaded, or does not hold the
            pinned files; the message says how to fix it.
    """
    roots = _roots(cache_dir, download, peers, timeout)
    return {
        name: os.path.join(roots[_SPECS[name].dist], *_SPECS[name].files[-1].split("/"))
        for name in peers
    }


def engine_files(
    dist: str,
    cache_dir: Optional[str] = None,
    *,
    download: bool = False,
    timeout: float = 1800.0,
) -> str:
    """The directory holding ``dist``'s pinned policy files and the engine files around them
    (``_CONTEXT``: the policy registry, its callers, the plugin loaders), extracted from the
    cached wheel in the wheel layout. Nothing is downloaded unless ``download=True``.

    Raises:
        ValueError: unknown dist
        PeerUnavailable: no wheel in the cache (and no download), or its files differ from
            the pinned release's
    """
    if dist not in _CONTEXT:
        raise ValueError(f"unknown dist {dist!r}; expected one of {', '.join(_CONTEXT)}")
    base = _DISTS[dist]
    full = _Dist(base.name, base.version, {**base.files, **_CONTEXT[dist]})
    with _fetch_lock:
        return _ensure(full, _cache(cache_dir), download, timeout)


def definition(path: str, name: str, namespace: Optional[dict[str, Any]] = None) -> Any:
    """One top-level definition of a Python file, executed alone: a function or class
    (``"compute_logical_maps"``), a method (``"_StatAccumulator.dump"``, returned as a plain
    function taking ``self``) or a module-level assignment (``"EPLBPolicyOption"``).

    Only that definition's source runs, in ``namespace`` (its globals: whatever it refers to),
    compiled with ``from __future__ import annotations`` so that annotations naming engine
    types are never evaluated. Lets the tests run an engine's own function without importing
    the engine.

    Raises:
        LookupError: the file has no such definition
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    tree = ast.parse(text, filename=path)
    outer, _, inner = name.partition(".")

    def find(body: list[ast.stmt], wanted: str) -> Optional[ast.stmt]:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.name == wanted:
                    return node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == wanted for t in targets):
                    return node
        return None

    node = find(tree.body, outer)
    if node is not None and inner:
        node = find(node.body, inner) if isinstance(node, ast.ClassDef) else None
    if node is None:
        raise LookupError(f"{path} has no top-level definition {name!r}")
    source = ast.get_source_segment(text, node)
    if source is None:  # pragma: no cover - ast always keeps positions for parsed files
        raise LookupError(f"cannot read the source of {name!r} in {path}")
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        decorators = [ast.get_source_segment(text, d) for d in node.decorator_list]
        if inner:  # a method: drop @classmethod / @staticmethod, keep it a plain function
            decorators = [d for d in decorators if d not in ("classmethod", "staticmethod")]
        source = "".join(f"@{d}\n" for d in decorators) + textwrap.dedent(
            " " * node.col_offset + source
        )
    scope: dict[str, Any] = {} if namespace is None else namespace
    scope.setdefault("__name__", f"_fasteplb_definition_{next(_counter)}")
    flags = __future__.annotations.compiler_flag
    exec(compile("\n" * (node.lineno - 1) + source, path, "exec", flags, True), scope)
    key = inner or outer
    return scope[key] if key in scope else scope[outer]


# --------------------------------------------------------------------------- loading by path


class _EngineImportBlocker(importlib.abc.MetaPathFinder):
    """Refuses imports of the engines while a policy file executes."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.partition(".")[0] in _ENGINES:
            raise ImportError(f"blocked import of the engine module {fullname}", name=fullname)
        return None


_counter = itertools.count(1)
_load_lock = threading.Lock()


def _is_private_or_engine(key: str) -> bool:
    return key.startswith("_fasteplb_peer_") or key.partition(".")[0] in _ENGINES


@contextlib.contextmanager
def _scoped_modules() -> Any:
    """Blocks engine imports inside the block, then drops the sys.modules entries it added
    under the private or the engines' names (modules it pulled in, e.g. of numpy, stay)."""
    before = set(sys.modules)
    blocker = _EngineImportBlocker()
    sys.meta_path.insert(0, blocker)
    try:
        yield
    finally:
        sys.meta_path.remove(blocker)
        for key in set(sys.modules) - before:
            if _is_private_or_engine(key):
                del sys.modules[key]


def _where(exc: BaseException, path: str) -> str:
    """``path:line (`statement`)`` of the file's frame that raised, else ``path``."""
    tb, found = exc.__traceback__, None
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
            found = tb.tb_lineno
        tb = tb.tb_next
    if found is None:
        return path
    line = linecache.getline(path, found).strip()
    return f"{path}:{found} (`{line}`)" if line else f"{path}:{found}"


def _exec_files(root: str, spec: _Spec) -> types.ModuleType:
    """Executes the spec's files under one private package; returns the last (the policy)."""
    package = f"_fasteplb_peer_{spec.dist}_{next(_counter)}"
    pkg = types.ModuleType(package)
    pkg.__path__ = []  # relative imports resolve only to the files loaded here
    module = pkg
    with _load_lock, _scoped_modules():
        sys.modules[package] = pkg
        for member in spec.files:
            path = os.path.join(root, *member.split("/"))
            stem = os.path.splitext(os.path.basename(path))[0]
            mod_spec = importlib.util.spec_from_file_location(f"{package}.{stem}", path)
            if mod_spec is None or mod_spec.loader is None:
                raise PeerUnavailable(f"cannot load {path} as a Python module")
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_spec.name] = module
            try:
                mod_spec.loader.exec_module(module)
            except ImportError as exc:
                what = exc.name or str(exc)
                if what.startswith(package + "."):
                    what = "the sibling module ." + what[len(package) + 1 :]
                raise PeerUnavailable(
                    f"{_where(exc, path)} imports {what}, which fasteplb does not provide: the "
                    "policy files are loaded alone, without their engine (is this file from "
                    f"{spec.dist} {_DISTS[spec.dist].version}?)"
                ) from exc
            except Exception as exc:
                raise PeerUnavailable(f"executing {path} failed: {exc!r}") from exc
            setattr(pkg, stem, module)
    return module


def _dist_info_version(root: str, dist: str) -> Optional[str]:
    found = sorted(glob.glob(os.path.join(root, f"{dist}-*.dist-info")))
    if not found:
        return None
    return os.path.basename(found[0])[len(dist) + 1 : -len(".dist-info")]


# --------------------------------------------------------------------------- the planners


def _as_tensor(weight: Any) -> Any:
    import torch

    return weight if isinstance(weight, torch.Tensor) else torch.as_tensor(weight)


def _summed(weight: Any) -> Any:
    """[L, E] as is; a [T, L, E] window summed over time, as both engines do for these."""
    w = _as_tensor(weight)
    if w.dim() == 3:
        return w.sum(dim=0)
    if w.dim() != 2:
        raise ValueError(
            f"weight must be [layers, experts] or [T, layers, experts], got {w.dim()}-D"
        )
    return w


def _phy2log(out: Any, layers: int, num_replicas: int, name: str) -> Any:
    import torch

    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (layers, num_replicas):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RuntimeError(
            f"peer {name} returned {got}, expected phy2log [{layers}, {num_replicas}]"
        )
    return out.to(torch.int64)


def _vllm_planner(module: types.ModuleType) -> tuple[Callable[..., Any], Callable[..., Any]]:
    raw = module.DefaultEplbPolicy.rebalance_experts

    def plan(weight: Any, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int) -> Any:
        w = _summed(weight)
        # Returns phy2log only (a CPU int64 tensor); vLLM's own fallback to the global
        # policy when num_groups % num_nodes != 0 happens inside.
        out = raw(w, num_replicas, num_groups, num_nodes, num_gpus)
        return _phy2log(out, w.shape[0], num_replicas, "vllm")

    return plan, raw


def _sglang_planner(module: types.ModuleType) -> tuple[Callable[..., Any], Callable[..., Any]]:
    raw = module.rebalance_experts

    def plan(weight: Any, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int) -> Any:
        w = _summed(weight)
        phy2log, _log2phy, _logcnt = raw(
            weight=w,
            num_replicas=num_replicas,
            num_groups=num_groups,
            num_nodes=num_nodes,
            num_gpus=num_gpus,
            enable_hierarchical=num_groups % num_nodes == 0,  # SGLang's "auto" choice
        )
        return _phy2log(phy2log, w.shape[0], num_replicas, "sglang")

    return plan, raw


def _sglang_vec_planner(module: types.ModuleType) -> tuple[Callable[..., Any], Callable[..., Any]]:
    raw = module.rebalance_experts

    def plan(weight: Any, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int) -> Any:
        w = _as_tensor(weight)
        if w.dim() == 2:
            w = w.unsqueeze(0)  # one time step
        elif w.dim() != 3:
            raise ValueError(
                f"weight must be [layers, experts] or [T, layers, experts], got {w.dim()}-D"
            )
        if num_gpus <= 0 or num_replicas % num_gpus != 0:
            raise ValueError(
                f"num_replicas {num_replicas} must be a multiple of num_gpus {num_gpus}"
            )
        phy2log, _log2phy, _logcnt = raw(
            tokens_per_expert=w,
            num_physical_experts=num_replicas,
            num_local_physical_experts=num_replicas // num_gpus,
            num_groups=num_groups,
            num_nodes=num_nodes,
            enable_hierarchical=num_groups % num_nodes == 0,
        )
        return _phy2log(phy2log, w.shape[1], num_replicas, "sglang-vec")

    return plan, raw


_PLANNERS = {"vllm": _vllm_planner, "sglang": _sglang_planner, "sglang-vec": _sglang_vec_planner}


@dataclass(frozen=True)
class Peer:
    """A loaded peer planner: ``peer(weight, num_replicas, num_groups, num_nodes, num_gpus)``.

    ``weight`` is [L, E] (a [T, L, E] window is summed over T for vllm/sglang, kept for
    sglang-vec); the result is phy2log, an int64 tensor [L, num_replicas].

    Attributes:
        name: the peer (one of ``PEERS``)
        dist, version: the engine distribution and version (the pinned one when the files match
            it, else from a ``<dist>-<version>.dist-info`` beside them, else ``"unknown"``)
        verified: the files are byte-identical to the pinned release's
        source: path of the policy file that was executed
        sha256: its sha256
        what: the engine object called, e.g. ``DefaultEplbPolicy.rebalance_experts``
        raw: that object, with the engine's own signature and return value
        module: the policy module (private, not in sys.modules)
    """

    name: str
    dist: str
    version: str
    verified: bool
    source: str
    sha256: str
    what: str
    raw: Callable[..., Any] = field(repr=False)
    module: types.ModuleType = field(repr=False)
    _plan: Callable[..., Any] = field(repr=False)

    @property
    def label(self) -> str:
        """E.g. ``vllm 0.33.0 DefaultEplbPolicy.rebalance_experts``."""
        return f"{self.dist} {self.version} {self.what}"

    def __call__(
        self, weight: Any, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
    ) -> Any:
        return self._plan(weight, num_replicas, num_groups, num_nodes, num_gpus)


_loaded: dict[tuple[str, str, str], Peer] = {}


def load(
    name: str,
    cache_dir: Optional[str] = None,
    *,
    download: bool = True,
    root: Optional[str] = None,
) -> Peer:
    """Load peer ``name`` (see ``PEERS``) as a uniform planner.

    With ``root``, its policy files are read from there, laid out as in the wheel (e.g.
    ``ROOT/vllm/distributed/eplb/policy/default.py``), and nothing is downloaded or checked
    against the pinned release. Otherwise ``fetch`` makes them present in ``cache_dir``.

    Raises:
        ValueError: unknown name
        PeerUnavailable: the files are missing (and cannot be downloaded) or do not load
    """
    spec = _check_name(name)
    dist = _DISTS[spec.dist]
    if root is None:
        root = _roots(cache_dir, download, (name,), 1800.0)[spec.dist]
    root = os.path.abspath(os.path.expanduser(root))
    paths = [os.path.join(root, *member.split("/")) for member in spec.files]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise PeerUnavailable(
            f"peer {name}: missing {', '.join(missing)} (expected the {dist.name} wheel layout "
            f"under {root})"
        )
    digests = {member: _sha256(p) for member, p in zip(spec.files, paths)}
    key = (name, root, digests[spec.files[-1]])
    if key in _loaded:
        return _loaded[key]
    verified = all(dist.files.get(member) == d for member, d in digests.items())
    version = dist.version if verified else (_dist_info_version(root, dist.name) or "unknown")
    module = _exec_files(root, spec)
    try:
        plan, raw = _PLANNERS[name](module)
    except AttributeError as exc:
        raise PeerUnavailable(f"peer {name}: {paths[-1]} lacks {spec.what}: {exc}") from None
    peer = Peer(
        name=name,
        dist=dist.name,
        version=version,
        verified=verified,
        source=paths[-1],
        sha256=digests[spec.files[-1]],
        what=spec.what,
        raw=raw,
        module=module,
        _plan=plan,
    )
    _loaded[key] = peer
    return peer


def available(
    cache_dir: Optional[str] = None, *, root: Optional[str] = None
) -> dict[str, Optional[str]]:
    """{peer: None if it loads without downloading, else the reason}.

    A wheel already in the cache counts as available (its policy files get extracted).
    """
    result: dict[str, Optional[str]] = {}
    for name in PEERS:
        try:
            load(name, cache_dir, download=False, root=root)
        except PeerUnavailable as exc:
            result[name] = str(exc)
        else:
            result[name] = None
    return result
