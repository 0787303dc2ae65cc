"""Summarise a pytest-benchmark JSON file as a Markdown table.

Usage:
    python -m pytest benchmarks/ --benchmark-json=results.json
    python benchmarks/summarize.py results.json [--markdown out.md]

One row per benchmark: group, name, mean time, elements per second (extra_info n_elements / mean; samples
for the vMF sampler), speed-up against the single-threaded SciPy row of the same group ("-" where the group
has none; a ratio of elements per second, so a SciPy row may time fewer elements than the others), the
share of non-finite outputs (extra_info nonfinite_share) and the share of finite outputs that disagree with
the plain PyTorch reference beyond the benchmark's tolerance (extra_info inaccurate_share; SciPy's float32
log of a subnormal ive, its ratio of underflowed ive), and for GPU rows the effective bandwidth (extra_info
bytes, what the call must read and write, / mean) with its share of the H200's 4.3 TB/s device copy rate.
Rows keep the JSON's order within each group.
Uses the standard library only.
"""
import argparse
import json
import sys
from collections import OrderedDict


def _label(bench):
    """A short name: implementation and threads from extra_info, else the test's parameter id."""
    info = bench.get("extra_info", {})
    if "impl" in info:
        if info.get("device") == "cuda":
            return f"{info['impl']} (cuda)"
        threads = info.get("threads")
        if info["impl"] == "scipy":
            return "scipy (1 thread)"
        return f"{info['impl']} ({threads} thread{'s' if threads != 1 else ''})"
    return bench.get("name", "?")


def _is_scipy_single_thread(bench):
    info = bench.get("extra_info", {})
    return info.get("impl") == "scipy" or ("scipy" in bench.get("name", "") and "t1" in bench.get("name", ""))


def _rate(bench):
    """Elements per second (extra_info n_elements / mean time), or None without a count."""
    n = bench.get("extra_info", {}).get("n_elements")
    mean = bench["stats"]["mean"]
    return n / mean if n and mean > 0 else None


def _format_rate(rate):
    if rate is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rate >= scale:
            return f"{rate / scale:.1f} {suffix}"
    return f"{rate:.0f}"


# The H200's device-to-device copy rate (about 4.3 TB/s): the ceiling of a memory-bound kernel.
DEVICE_COPY_BYTES_PER_S = 4.3e12


def _bandwidth(bench):
    """(GB/s, share of DEVICE_COPY_BYTES_PER_S) from extra_info bytes / mean, or None without a byte count."""
    nbytes = bench.get("extra_info", {}).get("bytes")
    mean = bench["stats"]["mean"]
    if not nbytes or mean <= 0:
        return None
    return nbytes / mean / 1e9, nbytes / mean / DEVICE_COPY_BYTES_PER_S


def _format_bandwidth(bandwidth):
    return "-" if bandwidth is None else f"{bandwidth[0]:.0f} ({100 * bandwidth[1]:.0f}%)"


def _format_share(share):
    if share is None:
        return "-"
    return "0" if share == 0 else f"{100 * share:.1f}%"


def summarize(data):
    """Return the rows of the table as lists of strings (header first)."""
    groups = OrderedDict()
    for bench in data.get("benchmarks", []):
        groups.setdefault(bench.get("group") or "(no group)", []).append(bench)

    rows = [["group", "name", "mean ms", "elements/s", "speed-up vs SciPy 1 thread", "non-finite",
             "finite but off", "GB/s (% of 4.3 TB/s)"]]
    for group, benches in groups.items():
        scipy = next((b for b in benches if _is_scipy_single_thread(b)), None)
        scipy_mean = scipy["stats"]["mean"] if scipy else None
        scipy_rate = _rate(scipy) if scipy else None
        for bench in benches:
            mean = bench["stats"]["mean"]
            info = bench.get("extra_info", {})
            rate = _rate(bench)
            if rate and scipy_rate:
                speedup = f"{rate / scipy_rate:.2f}x"
            else:  # no element counts: times of the same work
                speedup = f"{scipy_mean / mean:.2f}x" if scipy_mean and mean > 0 else "-"
            rows.append([group, _label(bench), f"{1e3 * mean:.2f}", _format_rate(rate), speedup,
                         _format_share(info.get("nonfinite_share")),
                         _format_share(info.get("inaccurate_share")), _format_bandwidth(_bandwidth(bench))])
    return rows


def to_markdown(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = set(range(2, len(rows[0])))  # numeric columns

    def line(row):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(rows[0]), rule] + [line(r) for r in rows[1:]]) + "\n"


def _machine_note(data):
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {})
    parts = [
        cpu.get("brand_raw") or machine.get("processor") or "",
        f"{cpu['count']} cores" if "count" in cpu else "",
        f"Python {machine['python_version']}" if "python_version" in machine else "",
        data.get("datetime", ""),
    ]
    return ", ".join(p for p in parts if p)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file", help="output of pytest --benchmark-json=FILE")
    parser.add_argument("--markdown", metavar="OUT", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)

    try:
        with open(args.json_file) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        parser.error(f"cannot read {args.json_file}: {exc}")
    if not data.get("benchmarks"):
        parser.error(f"{args.json_file} holds no benchmarks (were they all skipped?)")

    table = to_markdown(summarize(data))
    note = _machine_note(data)
    text = (f"Machine: {note}\n\n" if note else "") + table
    sys.stdout.write(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
