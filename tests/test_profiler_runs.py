"""Engines agree, runs resume exactly, and 2 processes (gloo) give the single-process result."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

from hawq.hessian import ENGINES, TraceState, choose_k, hutchinson_traces, pick_engine, saved_bytes


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Conv2d(4, 4, 3, groups=2), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3)).double().eval()


def data(n=3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def weights(m):
    return {n: p.weight for n, p in m.named_modules() if isinstance(p, (nn.Conv2d, nn.Linear))}


def run(m, batches, **kw):
    kw = {"rel_tol": 0.0, "max_probes": 12, "probes_per_batch": 2, "seed": 3, **kw}
    return hutchinson_traces(m, F.cross_entropy, batches, weights(m), **kw)


def assert_same(a, b, rel=1e-9):
    assert a.layers.keys() == b.layers.keys()
    for n in a.layers:
        assert a.layers[n].n == b.layers[n].n
        assert a.layers[n].mean == pytest.approx(b.layers[n].mean, rel=rel, abs=1e-12), n
        assert a.layers[n].se == pytest.approx(b.layers[n].se, rel=1e-6, abs=1e-12), n


@pytest.mark.parametrize("engine", ENGINES)
def test_engines_give_the_same_samples(engine):
    m, b = net(), data()
    assert_same(run(m, b, engine=engine), run(m, b, engine="double_backward"), rel=1e-8)


def test_auto_picks_a_working_engine():
    m, b = net(), data(1)
    assert pick_engine(m, F.cross_entropy, b[0], list(weights(m).values()), 2) in ENGINES


def test_the_engine_choice_is_timed_and_reported_apart_from_the_probes():
    m, b = net(), data(2)
    auto, named = run(m, b, engine="auto"), run(m, b, engine="double_backward")
    assert auto.engine in ENGINES and auto.engine_seconds > 0
    assert named.engine_seconds < auto.engine_seconds and named.probes == auto.probes
    assert_same(auto, named, rel=1e-8)  # choosing spends no probe of the estimate


def test_interrupted_run_resumes_to_the_same_result():
    m, b = net(), data()
    full = run(m, b)
    saved = {}

    def stop_after_two(state):
        saved["state"] = state.to_dict()
        if state.rounds == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(m, b, on_round=stop_after_two)
    resumed = run(m, b, state=TraceState.from_dict(saved["state"]))
    assert resumed.rounds == full.rounds == 2
    assert_same(resumed, full)


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        res = run(net(), data(4))
        if rank == 0:
            torch.save({n: (e.mean, e.se, e.n) for n, e in res.layers.items()}, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    single = run(net(), data(4))
    out = tmp_path / "rank0.pt"
    port = 29500 + os.getpid() % 1000
    mp.spawn(_worker, args=(2, port, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    for n, e in single.layers.items():
        mean, se, cnt = got[n]
        assert cnt == e.n and mean == pytest.approx(e.mean, rel=1e-9, abs=1e-12) and se == pytest.approx(e.se, rel=1e-6)


def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    """`hawq profile` killed with SIGKILL mid-run resumes from its checkpoint to the same profile."""
    torch.manual_seed(0)
    from hawq.models import resnet20
    torch.save(resnet20().state_dict(), tmp_path / "w.pt")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[model]\ncheckpoint = "{tmp_path / "w.pt"}"\n[data]\ncalibration = 40\nbatch_size = 10\n'
                      '[profile]\nsensitivity = "trace"\nmax_probes = 16\nrel_tol = 0.0001\n')
    cmd = [sys.executable, "-m", "hawq", "--quiet", "profile", str(recipe), "--engine", "double_backward"]
    ref = tmp_path / "ref.json"
    subprocess.run(cmd + ["--out", str(ref)], check=True, capture_output=True)
    out = tmp_path / "p.json"
    proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = Path(f"{out}.partial")
    deadline = time.time() + 120
    while not partial.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert partial.exists(), "no checkpoint appeared before the run ended"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    subprocess.run(cmd + ["--out", str(out)], check=True, capture_output=True)
    from hawq.sensitivity import Profile
    a, b = Profile.load(ref), Profile.load(out)
    assert [l.trace for l in a.layers] == pytest.approx([l.trace for l in b.layers], rel=1e-9)
    assert not partial.exists()


def test_saved_bytes_counts_the_activations_backward_keeps():
    """A Linear(6, 5) then cross-entropy on a batch of 16 (float64): autograd keeps the input
    (16·6) for the weight gradient and the logits' softmax (16·5); nothing else is that large."""
    lin = nn.Linear(6, 5).double()
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 5, (16,))
    got = saved_bytes(lin, F.cross_entropy, (x, y))
    assert 8 * (16 * 6 + 16 * 5) <= got <= 8 * (16 * 6 + 16 * 5) + 8 * 16 * 5 + 1024
    assert saved_bytes(lin, F.cross_entropy, (torch.cat([x, x]), torch.cat([y, y]))) > 1.9 * got - 1024


def test_k_is_chosen_from_free_memory():
    m = net()
    batches = data()
    params = list(weights(m).values())
    per = 3 * saved_bytes(m, F.cross_entropy, batches[0])
    assert choose_k(m, F.cross_entropy, batches[0], params, "jvp_vmap", free=10 * per, share=0.5) == 5
    assert choose_k(m, F.cross_entropy, batches[0], params, "jvp_vmap", free=per, share=0.5) == 1
    assert choose_k(m, F.cross_entropy, batches[0], params, "jvp_vmap", free=10**15, k_max=8) == 8
