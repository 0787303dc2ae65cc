"""The Python half of tools/gpu_check.sh: recording results, parsing the logs, and the sanitizer's op calls.

Standard library only, except ``smoke`` (torch and dhvc_ext). Subcommands:
  record SUMMARY STEP STATUS SECONDS [--note TEXT] [--json FILE]
      set summary.json's entry for STEP (status, seconds, note, and the JSON object in FILE as its results),
      written atomically, so that a kill at any moment leaves a readable file
  ptxas BUILD_LOG OUT_JSON      registers, spills, stack and shared memory per CUDA kernel (-Xptxas -v)
  junit XML OUT_JSON            pass / fail / skip / error counts and the failed tests' names
  bench BENCH_JSON... OUT_JSON  per benchmark: mean, elements/s, GB/s and share of 4.3 TB/s; per group
                                ours against the torch composite (time ratio)
  train RUN_DIR OUT_JSON        samples/s and ACC of a `dhvc train` run (metrics.json, else its log)
  smoke --device DEV            every op of dhvc_ext on tiny inputs, forward and backward (compute-sanitizer
                                memcheck runs this on the GPU; the dry run on the CPU)
  selfcheck                     the log parsers on built-in samples (the dry run, where there is no build log)
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

DEVICE_COPY_BYTES_PER_S = 4.3e12  # the H200's device-to-device copy rate


def _write_json(path, data):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _read_json(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return default


def record(args):
    summary = _read_json(args.summary, {"steps": {}})
    entry = {"status": args.status, "seconds": round(float(args.seconds), 1)}
    if args.note:
        entry["note"] = args.note
    if args.json:
        results = _read_json(args.json, None)
        if results is not None:
            entry["results"] = results
    summary.setdefault("steps", {})[args.step] = entry
    _write_json(args.summary, summary)


# --- ptxas ------------------------------------------------------------------------------------------------

_FUNCTION = re.compile(r"ptxas info\s*: (?:Compiling entry function|Function properties for) '?([^'\s]+)'?")
_USED = re.compile(r"ptxas info\s*: Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_SMEM = re.compile(r"(\d+) bytes smem")


def _demangle(names):
    try:
        run = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, timeout=20)
        out = run.stdout.splitlines()
        if run.returncode == 0 and len(out) == len(names):
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    return names


def parse_ptxas(text):
    """{kernel: {registers, spill_stores, spill_loads, stack, smem}} from nvcc -Xptxas -v output. ptxas prints,
    per function, 'Compiling entry function' or 'Function properties for', then the stack/spill line, then
    the 'Used N registers' line; the last values seen for a name win (one architecture is built)."""
    kernels, current = {}, None
    for line in text.splitlines():
        m = _FUNCTION.search(line)
        if m:
            current = m.group(1)
            kernels.setdefault(current, {})
            continue
        if current is None:
            continue
        m = _SPILL.search(line)
        if m:
            kernels[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                                    spill_loads=int(m.group(3)))
        m = _USED.search(line)
        if m:
            kernels[current]["registers"] = int(m.group(1))
            m = _SMEM.search(line)
            if m:
                kernels[current]["smem"] = int(m.group(1))
    # Our kernels only (torch's headers add none that ptxas reports under other names); demangled.
    kernels = {k: v for k, v in kernels.items() if "registers" in v or "spill_stores" in v}
    names = list(kernels)
    return {pretty: kernels[name] for name, pretty in zip(names, _demangle(names))}


def ptxas(args):
    with open(args.build_log, errors="replace") as f:
        kernels = parse_ptxas(f.read())
    spilling = sorted(k for k, v in kernels.items() if v.get("spill_stores", 0) or v.get("spill_loads", 0))
    _write_json(args.out, {"kernels": len(kernels), "spilling": spilling, "per_kernel": kernels})
    for name, v in kernels.items():
        print(f"  {v.get('registers', '?'):>4} registers, spills {v.get('spill_stores', 0)}/{v.get('spill_loads', 0)} "
              f"B: {name[:110]}")


# --- junit ------------------------------------------------------------------------------------------------

def parse_junit(path):
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_tests"] = failed[:50]
    return counts


def junit(args):
    _write_json(args.out, parse_junit(args.xml))


# --- benchmarks ---------------------------------------------------------------------------------------------

def parse_bench(data):
    rows, groups = [], {}
    for b in data.get("benchmarks", []):
        info, mean = b.get("extra_info", {}), b["stats"]["mean"]
        row = {"group": b.get("group"), "impl": info.get("impl", b.get("name")), "mean_ms": round(1e3 * mean, 4)}
        if info.get("n_elements") and mean > 0:
            row["elements_per_s"] = info["n_elements"] / mean
        if info.get("bytes") and mean > 0:
            row["GB_per_s"] = round(info["bytes"] / mean / 1e9, 1)
            row["share_of_4.3TB_per_s"] = round(info["bytes"] / mean / DEVICE_COPY_BYTES_PER_S, 3)
        rows.append(row)
        groups.setdefault(row["group"], {})[row["impl"]] = mean
    ratios = {g: round(v["torch"] / v["ours"], 2) for g, v in groups.items() if "ours" in v and "torch" in v}
    return {"benchmarks": len(rows), "rows": rows, "torch_time_over_ours": ratios}


def bench(args):
    merged = {"benchmarks": [b for path in args.bench_json for b in _read_json(path, {}).get("benchmarks", [])]}
    _write_json(args.out, parse_bench(merged))


# --- training ----------------------------------------------------------------------------------------------

def train(args):
    metrics = _read_json(os.path.join(args.run_dir, "metrics.json"), None)
    out = {}
    if metrics is not None:
        n, epochs = metrics.get("n_samples"), metrics.get("config", {}).get("epochs", 0)
        pre = metrics.get("config", {}).get("pretrain_epochs", 0)
        seconds = metrics.get("train_seconds")
        out = {k: metrics.get(k) for k in ("acc", "nmi", "ari", "seconds", "train_seconds", "device",
                                           "cuda_kernels_used", "n_samples")}
        if n and seconds:
            out["samples_per_s"] = round(n * (epochs + pre) / seconds, 1)
    try:
        with open(os.path.join(args.run_dir, "log.jsonl")) as f:
            log = [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError):
        log = []
    out["epochs_logged"] = len(log)
    for phase in ("pretrain", "joint"):  # the median epoch's throughput, as benchmarks/dhvc_results.py gives it
        rates = sorted(e["samples_per_s"] for e in log if e.get("phase") == phase and "samples_per_s" in e)
        if rates:
            out[f"{phase}_samples_per_s_median_epoch"] = round(rates[len(rates) // 2], 1)
    if log:
        out["last_epoch"] = log[-1]
    _write_json(args.out, out)
    print(json.dumps({k: v for k, v in out.items() if k != "last_epoch"}))


# --- the sanitizer's op calls ---------------------------------------------------------------------------------

def smoke(args):
    """Every op on tiny inputs (a few rows, odd sizes, both dtypes), forward and backward, on one device:
    compute-sanitizer memcheck reports any out-of-bounds or misaligned access of our kernels. Values are
    checked by the test suite; here only finiteness and shapes."""
    import torch

    import dhvc_ext  # noqa: F401
    from dhvc_ext.ops import (OPS, bessel_iv_ratio, log_bessel_iv, log_bessel_iv_normalized, vmf_kappa_mle,
                              vmf_log_normalizer, vmf_sample, vmfmm_em_statistics, vmfmm_log_responsibilities)

    dev = torch.device(args.device)
    called = set()
    for dtype in (torch.float32, torch.float64):
        g = torch.Generator().manual_seed(0)
        nu = (torch.rand(7, generator=g, dtype=torch.float64) * 40).to(dev, dtype)
        x = (torch.rand(7, generator=g, dtype=torch.float64) * 60 + 0.1).to(dev, dtype).requires_grad_()
        outs = [log_bessel_iv(nu, x), log_bessel_iv_normalized(nu, x), bessel_iv_ratio(nu, x)]
        (grad,) = torch.autograd.grad(sum(o.sum() for o in outs), x, create_graph=True)
        grad.sum().backward()  # second order: _bessel_iv_ratio_derivative of order 2
        called |= {"log_bessel_iv", "log_bessel_iv_normalized", "bessel_iv_ratio", "_bessel_iv_ratio_derivative"}
        kappa = (torch.rand(5, generator=g, dtype=torch.float64) * 100).to(dev, dtype)
        assert torch.isfinite(vmf_log_normalizer(9, kappa)).all()
        assert torch.isfinite(vmf_kappa_mle(9, torch.rand(5, generator=g, dtype=torch.float64).to(dev, dtype))).all()
        called |= {"vmf_log_normalizer", "vmf_kappa_mle"}
        n, d, k = 37, 5, 3
        z = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(dev, dtype)
        mu = torch.nn.functional.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1).to(dev, dtype)
        kap = torch.tensor([1.0, 10.0, 100.0], dtype=dtype, device=dev).requires_grad_()
        log_pi = torch.log(torch.tensor([0.2, 0.3, 0.5], dtype=dtype, device=dev))
        lr, ll = vmfmm_log_responsibilities(z, mu, kap, log_pi)
        (lr.sum() + ll.sum()).backward()
        for hard in (False, True):
            counts, sums, total = vmfmm_em_statistics(z, mu, kap.detach(), log_pi, hard=hard)
            assert abs(counts.double().sum().item() - n) < 1e-3 and sums.shape == (k, d)
            # A z of row stride 2 d, which the EM op reads in place.
            vmfmm_em_statistics(torch.stack([z, z], 1)[:, 0], mu, kap.detach(), log_pi,
                                hard=hard)
        called |= {"_vmfmm_scores_log_softmax", "_vmfmm_em_statistics"}
        loc = mu[:1].expand(11, d).contiguous().requires_grad_()
        conc = torch.logspace(-2, 4, 11, dtype=dtype, device=dev).requires_grad_()
        sample = vmf_sample(loc, conc, generator=torch.Generator(device=dev).manual_seed(1))
        sample.sum().backward()
        assert torch.isfinite(loc.grad).all() and torch.isfinite(conc.grad).all()
        called |= {"vmf_sample", "_vmf_sample_backward"}
    if dev.type == "cuda":
        torch.cuda.synchronize()
    missing = sorted(set(OPS) - called)
    assert not missing, f"ops the smoke run does not call: {missing}"
    print(f"smoke: {len(called)} ops called on {dev} (float32 and float64, forward and backward): OK")


def selfcheck(_args):
    sample = "\n".join([
        "ptxas info    : Compiling entry function '_ZN8dhvc_ext12_GLOBAL__N_114em_rows_kernelIfEEvPT_' for 'sm_90'",
        "ptxas info    : Function properties for _ZN8dhvc_ext12_GLOBAL__N_114em_rows_kernelIfEEvPT_",
        "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads",
        "ptxas info    : Used 40 registers, used 0 barriers, 8 bytes cumulative stack size, 400 bytes cmem[0]",
    ])
    kernels = parse_ptxas(sample)
    (only,) = kernels.values()
    assert only == {"stack": 8, "spill_stores": 4, "spill_loads": 4, "registers": 40}, only
    bench_rows = parse_bench({"benchmarks": [
        {"group": "g", "stats": {"mean": 0.002}, "extra_info": {"impl": "ours", "n_elements": 1000, "bytes": 8.6e9}},
        {"group": "g", "stats": {"mean": 0.004}, "extra_info": {"impl": "torch", "n_elements": 1000}}]})
    assert bench_rows["torch_time_over_ours"] == {"g": 2.0} and bench_rows["rows"][0]["share_of_4.3TB_per_s"] == 1.0
    print("selfcheck: the ptxas and benchmark parsers read their samples right")


# subcommand -> (function, positional arguments)
COMMANDS = {
    "record": (record, ("summary", "step", "status", "seconds")),
    "ptxas": (ptxas, ("build_log", "out")),
    "junit": (junit, ("xml", "out")),
    "bench": (bench, ()),
    "train": (train, ("run_dir", "out")),
    "smoke": (smoke, ()),
    "selfcheck": (selfcheck, ()),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, positional) in COMMANDS.items():
        p = sub.add_parser(name)
        for arg in positional:
            p.add_argument(arg)
        p.set_defaults(fn=fn)
        if name == "record":
            p.add_argument("--note")
            p.add_argument("--json")
        elif name == "bench":
            p.add_argument("bench_json", nargs="+", help="pytest-benchmark JSON files")
            p.add_argument("out")
        elif name == "smoke":
            p.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    return args.fn(args) or 0


if __name__ == "__main__":
    sys.exit(main())
