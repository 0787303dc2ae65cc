"""What the ``dhvc`` command prints while it works: the progress bars, the one-line epoch reports, data set
descriptions and warnings on one line.
"""
import sys

import torch


SCORES = ("acc", "nmi", "ari")


def describe(dataset):
    classes = "" if dataset.y is None else f", {len(set(dataset.y.tolist()))} classes"
    return f"{dataset.name} ({len(dataset)} x {dataset.n_features}{classes})"


def format_terms(record, terms):
    return "  ".join(f"{t} {record[t]:.4g}" for t in terms if t in record)


class ProgressBars:
    """tqdm bars: one over epochs (each loss term of the last epoch and its samples/s), one over the samples
    of the current epoch (running means of each loss term; tqdm's rate is samples/s).

    ``batch_done`` is ``Trainer.fit``'s batch callback (the batch's loss terms after each step).
    """

    def __init__(self, trainer, n_samples):
        from dhvc_ext.models import LOSS_TERMS

        self.trainer, self.terms = trainer, LOSS_TERMS
        bs = trainer.batch_size(n_samples)
        self.per_epoch = n_samples - n_samples % bs if n_samples > bs else n_samples  # drop_last, as fit does
        self._epoch, self._sums, self._seen = None, {}, 0

    def __enter__(self):
        from tqdm import tqdm

        cfg = self.trainer.config
        self.epochs = tqdm(total=cfg.total_epochs, initial=self.trainer.epoch, desc="DHVC", unit="epoch",
                           position=0, dynamic_ncols=True, file=sys.stderr)
        self.batches = tqdm(total=self.per_epoch, desc="", unit="sample", position=1,
                            leave=False, dynamic_ncols=True, file=sys.stderr)
        return self

    def __exit__(self, *exc):
        self.batches.close()
        self.epochs.close()
        return False

    def batch_done(self, trainer, phase, b, terms):
        if trainer.epoch != self._epoch:
            self._epoch, self._sums, self._seen = trainer.epoch, dict.fromkeys(self.terms, 0.0), 0
            self.batches.reset(total=self.per_epoch)
            self.batches.set_description(f"{phase} {trainer.epoch + 1}/{trainer.config.total_epochs}")
        for t in self.terms:
            self._sums[t] += terms[t] * b
        self._seen += b
        self.batches.set_postfix_str(format_terms({t: s / self._seen for t, s in self._sums.items()}, self.terms),
                                     refresh=False)
        self.batches.update(b)

    def epoch_done(self, entry):
        scores = "  ".join(f"{s} {entry[s]:.3f}" for s in SCORES if entry.get(s) is not None)
        self.epochs.set_postfix_str(f"{entry['phase']}  {format_terms(entry, self.terms)}  "
                                    f"{entry['samples_per_s']:.0f} samples/s" + (f"  {scores}" if scores else ""),
                                    refresh=False)
        self.epochs.update(1)


def threads_text():
    n = torch.get_num_threads()
    return f"{n} thread{'s' if n != 1 else ''}"


def cpu_has_native_bf16():
    """Whether this CPU computes bfloat16 natively (the avx512_bf16 or amx_bf16 flags of /proc/cpuinfo; False
    where that file is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def precision_text(trainer):
    """How the networks compute, for the start of a run: bf16 autocast or float32, and on the CPU whether it
    has native bf16 (where --bf16 pays: see the README's Scaling section)."""
    text = "bf16 autocast" if trainer.config.bf16 else "float32"
    if trainer.device.type == "cpu":
        text += f"; this CPU {'has' if cpu_has_native_bf16() else 'has no'} native bf16"
    return text


def one_line_warning(message, category, filename, lineno, line=None):
    return f"dhvc: warning: {category.__name__}: {' '.join(str(message).split())}\n"
