"""``dhvc train --profile``: a few training steps of each phase under torch.profiler, on replicas of the
trainer (``Trainer.replica``), so that the run itself is untouched.
"""
import torch

from dhvc_ext.exit_codes import EXIT_NOT_WRITABLE, CLIError
from dhvc_ext.run_files import PROFILE_TRACE, PROFILE_TXT, rng_preserved, write_or_fail, write_text


def write_profile(trainer, dataset, out, steps):
    """Profile ``steps`` training steps of each phase (``Trainer.step``, the training's own, on a replica of
    the trainer per phase: the run itself is untouched, torch's random state restored); write the table and
    a Chrome trace; return the share of time in dhvc_ext ops."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = trainer.device.type == "cuda"
    replicas = [(phase, trainer.replica(phase, dataset)) for phase in ("pretrain", "joint")]
    with rng_preserved(trainer.device):
        batches = {}
        for phase, replica in replicas:
            batches[phase] = []
            while len(batches[phase]) < steps + 1:
                batches[phase].extend(replica.training_batches(dataset, phase))
            del batches[phase][steps + 1:]

        def step(replica, phase, batch):
            x, targets = batch
            with record_function(f"dhvc {phase} step"):
                replica.step(x, phase, targets)

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        for phase, replica in replicas:  # warm-up: first-call allocations and lazy initialisation stay out
            step(replica, phase, batches[phase][0])
        if cuda:
            torch.cuda.synchronize(trainer.device)
        with profile(activities=activities) as prof:
            for phase, replica in replicas:
                for batch in batches[phase][1:]:
                    step(replica, phase, batch)
            if cuda:
                torch.cuda.synchronize(trainer.device)
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    total = sum(getattr(e, attr) for e in events) or 1.0
    ours = sorted(((e.key, getattr(e, attr) / total) for e in events if e.key.startswith("dhvc_ext::")),
                  key=lambda kv: -kv[1])
    glue = sum(getattr(e, attr) for e in events if e.key.startswith("GeneratedBackwardFor_dhvc_ext")) / total
    share = sum(v for _, v in ours)
    what = "GPU kernel time" if cuda else "CPU self time"
    header = [f"torch.profiler: {steps} pretraining + {steps} joint training steps (forward, backward, "
              f"clipping, Adam), batch {batches['joint'][0][0].shape[0]}, device {trainer.device}, "
              f"torch threads {torch.get_num_threads()}",
              f"share of {what} in dhvc_ext ops: {100 * share:.1f}%"
              + ("" if cuda else f" (and {100 * glue:.1f}% in their autograd nodes, GeneratedBackwardFor_dhvc_ext_*)")]
    header += [f"  {key}: {100 * value:.1f}%" for key, value in ours]
    table = events.table(sort_by=attr, row_limit=30)
    write_or_fail(out / PROFILE_TXT, write_text, "\n".join(header) + "\n\n" + table + "\n")
    try:
        prof.export_chrome_trace(str(out / PROFILE_TRACE))
    except OSError as err:
        raise CLIError(EXIT_NOT_WRITABLE, f"could not write {out / PROFILE_TRACE}: {err}") from None
    return share, ours, header
