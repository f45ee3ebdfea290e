"""The rings' memory-ordering modes (``mpray/transport/atomics.py``, issue 14): which mode
a setting gives on which CPU, the refusals, the portable mode's atomics (and the
instructions they compile to on aarch64), and real mpray programs in a subprocess with
``MPRAY_RING_ATOMICS=portable``, with the default mode (no numba imported) and with numba
missing (``init()`` says why it cannot run).

The ring tests themselves run in both modes in ``test_rings.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import mpray
from mpray import config as C
from mpray.transport import atomics
from mpray.transport.rings import Doorbell, Ring, anonymous_shared, ring_bytes

from conftest import REPO, PrivateTmpdir

pytestmark = pytest.mark.timeout(240)

ON_X86_64 = os.uname().machine == "x86_64"


# ---------------------------------------------------------------------------- selection

@pytest.mark.parametrize("value, machine, mode", [
    (None, "x86_64", "tso"),
    ("auto", "x86_64", "tso"),
    (" AUTO ", "x86_64", "tso"),
    ("tso", "x86_64", "tso"),
    ("portable", "x86_64", "portable"),
    ("auto", "aarch64", "portable"),
    ("", "aarch64", "portable"),
    ("portable", "aarch64", "portable"),
    ("auto", "ppc64le", "portable"),
    ("auto", "riscv64", "portable"),
    ("auto", "i686", "portable"),  # (x86, but 64-bit words are not single stores there)
])
def test_select_gives_a_mode_per_machine(value, machine, mode):
    assert atomics.select(value, machine) == mode


@pytest.mark.parametrize("machine", ["aarch64", "ppc64le", "riscv64"])
def test_tso_is_refused_off_x86_64(machine):
    with pytest.raises(ValueError, match=rf"MPRAY_RING_ATOMICS.*x86-64.*{machine}.*portable"):
        atomics.select("tso", machine)


def test_unknown_value_names_the_variable_and_the_choices():
    with pytest.raises(ValueError, match=r"MPRAY_RING_ATOMICS.*auto, tso, portable.*'weak'"):
        atomics.select("weak", "x86_64")
    with pytest.raises(ValueError, match=r"MPRAY_RING_ATOMICS.*auto, tso, portable"):
        C.resolve({}, {"MPRAY_NUM_GPUS": "0", "MPRAY_RING_ATOMICS": "weak"})
    with pytest.raises(ValueError, match=r"ring_atomics"):
        C.resolve({"ring_atomics": "relaxed"}, {"MPRAY_NUM_GPUS": "0"})


def test_setting_follows_the_config_conventions():
    env = {"MPRAY_NUM_GPUS": "0"}
    assert C.resolve({}, env).ring_atomics == "auto"
    assert C.resolve({}, dict(env, MPRAY_RING_ATOMICS="Portable")).ring_atomics == "portable"
    # the init() argument wins over the variable
    assert C.resolve({"ring_atomics": "tso"},
                     dict(env, MPRAY_RING_ATOMICS="portable")).ring_atomics == "tso"
    assert ("ring_atomics", "MPRAY_RING_ATOMICS") in [(n, e) for n, e, _h in C.SETTINGS]


def test_init_refuses_an_unknown_value_before_starting_anything():
    with pytest.raises(ValueError, match="MPRAY_RING_ATOMICS"):
        mpray.init(num_cpus=1, ring_atomics="weak")
    assert not mpray.is_initialized()


# ------------------------------------------------------------------ the portable atomics

def test_each_mode_builds_its_kind_of_ring_and_doorbell():
    mem = anonymous_shared(64 + ring_bytes(256))
    made = []
    try:
        port_ring, port_bell = Ring(mem, 64, 256, "portable"), Doorbell(-1, mem, 0, "portable")
        made += [port_ring, port_bell]
        assert type(port_ring._idx).__name__ == "Words"
        assert type(port_bell).__name__ == "_FencedDoorbell"
        if ON_X86_64:
            tso_ring, tso_bell = Ring(mem, 64, 256, "tso"), Doorbell(-1, mem, 0, "tso")
            made += [tso_ring, tso_bell]
            assert isinstance(tso_ring._idx, memoryview) and type(tso_bell) is Doorbell
            # one layout: what either kind writes, the other reads
            assert port_ring.try_push(b"from portable") == 13
            assert tso_ring.pop_all() == [b"from portable"]
            tso_bell.sleep_begin()
            assert port_bell._flag[0] == 1
    finally:
        for obj in made:
            if isinstance(obj, Ring):
                obj.release()
            else:
                obj._flag.release()
        mem.close()


def test_words_are_64_bit_acquire_release_views_of_the_mapping():
    jit = atomics.jit()
    mem = anonymous_shared(4096)
    mv = memoryview(mem)
    plain = mv[:128].cast("Q")
    words = jit.Words(mv[:128])
    try:
        assert len(words) == 16
        words[8] = 2**64 - 1
        words[0] = 12345
        assert plain[8] == 2**64 - 1 and plain[0] == 12345
        plain[3] = 77
        assert words[3] == 77
        jit.fence()
        with pytest.raises(IndexError):
            words[16]
        with pytest.raises(ValueError, match="aligned"):
            jit.Words(mv[4:12])
        with pytest.raises(BufferError):
            mem.close()  # the view holds the mapping: no address can dangle
        words.release()
        with pytest.raises(IndexError):
            words[0]  # a released view refuses, it does not touch unmapped memory
    finally:
        words.release()
        plain.release()
        mv.release()
        mem.close()


def test_portable_functions_compile_to_acquire_release_and_a_full_fence_on_aarch64():
    """The LLVM our intrinsics emit, compiled for aarch64 (no aarch64 machine needed):
    ``ldar`` (load-acquire), ``stlr`` (store-release), ``dmb ish`` (full barrier)."""
    import llvmlite.binding as llvm
    from numba import njit

    jit = atomics.jit()
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    tm = llvm.Target.from_triple("aarch64-unknown-linux-gnu").create_target_machine(opt=2)
    for func, want in ((jit.load_acquire, "ldar"), (jit.store_release, "stlr"),
                       (jit.fence, "dmb\tish")):
        sig = func.signatures[0]
        module = llvm.parse_assembly(njit(sig)(func.py_func).inspect_llvm(sig))
        module.triple = "aarch64-unknown-linux-gnu"
        module.data_layout = str(tm.target_data)
        asm = tm.emit_assembly(module)
        assert want in asm, f"{func.__name__} has no {want!r} on aarch64"


# ------------------------------------------------------------- programs in a subprocess

PROGRAM = r"""
import os, sys
import numpy as np
import mpray
from mpray.transport import atomics

mpray.init(num_cpus=2, object_store_memory=128 << 20)

@mpray.remote
def mode_and_pid(x):
    from mpray.transport import atomics
    return x + 1, atomics.mode(), os.getpid()

@mpray.remote
def nested(n):
    return sum(mpray.get([mode_and_pid.remote(i) for i in range(n)])[k][0] for k in range(n))

@mpray.remote
def total(a):
    return float(a.sum()), a * 2

@mpray.remote
class Counter:
    def __init__(self):
        self.n = 0
    def add(self, k):
        self.n += k
        return self.n, atomics.mode()

out = mpray.get([mode_and_pid.remote(i) for i in range(20)])
assert [x for x, _m, _p in out] == list(range(1, 21)), out
modes = {m for _x, m, _p in out}
assert mpray.get(nested.remote(5)) == 15
c = Counter.remote()
calls = mpray.get([c.add.remote(k) for k in range(100)])
assert calls[-1][0] == sum(range(100)), calls[-1]
modes |= {m for _n, m in calls}
big = np.arange(3_000_000, dtype=np.float64)  # 24 MB: through the store, not a ring
s, doubled = mpray.get(total.remote(big))
assert s == float(big.sum()) and doubled[-1] == 2 * big[-1]
ref = mpray.put(big)
assert mpray.get(total.remote(ref))[0] == s
print("MODES", atomics.mode(), sorted(modes))
print("NUMBA", "numba" in sys.modules)
mpray.shutdown()
"""


def _run(program: str, env_extra: dict, tmp: PrivateTmpdir,
         timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, **tmp.env, **env_extra)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def private_tmp():
    tmp = PrivateTmpdir()
    yield tmp
    tmp.remove()


def test_a_real_program_runs_in_portable_mode(private_tmp):
    r = _run(PROGRAM, {"MPRAY_RING_ATOMICS": "portable"}, private_tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    # driver, node-forked workers and the actor all used the portable rings
    assert "MODES portable ['portable']" in r.stdout, r.stdout
    assert "NUMBA True" in r.stdout
    private_tmp.check_clean(detail=r.stderr)


@pytest.mark.skipif(not ON_X86_64, reason="the tso default exists on x86-64 only")
def test_default_mode_on_x86_64_never_imports_numba(private_tmp):
    r = _run(PROGRAM, {"MPRAY_RING_ATOMICS": ""}, private_tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MODES tso ['tso']" in r.stdout, r.stdout
    assert "NUMBA False" in r.stdout, "init() or a ring imported numba in tso mode"
    private_tmp.check_clean(detail=r.stderr)


NO_NUMBA = r"""
import sys
sys.modules["numba"] = None  # "import numba" now fails, as where it is not installed
import mpray
from mpray.transport import atomics

def refusal(**kw):
    try:
        mpray.init(num_cpus=1, **kw)
    except RuntimeError as e:
        assert not mpray.is_initialized()
        return str(e)
    mpray.shutdown()
    return "STARTED"

print("FORCED:", refusal(ring_atomics="portable"))
atomics._machine = lambda: "aarch64"  # (this throwaway process only)
print("AARCH64:", refusal())
"""


def test_init_refuses_clearly_without_numba(private_tmp):
    r = _run(NO_NUMBA, {"MPRAY_RING_ATOMICS": ""}, private_tmp, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    forced, arm = (next(x for x in r.stdout.splitlines() if x.startswith(p))
                   for p in ("FORCED:", "AARCH64:"))
    for line in (forced, arm):
        assert "mpray cannot run safely" in line and "pip install numba" in line, line
    assert "ring_atomics=portable" in forced
    assert "aarch64" in arm and "acquire/release" in arm and "corruption" in arm, arm
    private_tmp.check_clean(made=False)
