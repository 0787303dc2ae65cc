"""``dhvc train --tensorboard``: a run's TensorBoard event files, in ``DIR/tensorboard``.

Per epoch (the global epoch number is the step): every loss term of ``LOSS_TERMS`` as ``loss/<term>``,
``train/samples_per_s``, ``train/grad_norm``, ``mixture/loglik`` at refreshes, the scores against the labels
when the epoch computed them (``score/acc``, ``score/nmi``, ``score/ari``); the histograms
``concentration/posterior`` (kappa of q(z|x) on the first ``HISTOGRAM_ROWS`` rows) and, once the mixture is
fitted, ``concentration/mixture`` (its K kappas). At the end of the run, the latent means mu_x of the first
``EMBEDDING_ROWS`` rows in the embedding projector, with their cluster (and class, when the data have labels).

The ``tensorboard`` package is an optional dependency (``pip install tensorboard``, or the ``tensorboard``
extra); ``require()`` says so with the command to run. Only the run module calls this, after an epoch's
checkpoint is written: the Trainer knows nothing of it, and nothing it does moves torch's random state.
"""
import numpy as np
import torch

#: Rows whose posterior concentration is logged each epoch, and rows shown in the embedding projector.
HISTOGRAM_ROWS, EMBEDDING_ROWS = 4096, 10000
#: The subdirectory of the run directory that holds the event files.
SUBDIR = "tensorboard"


def require():
    """None when TensorBoard's writer can be imported; else the message that names the fix."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        return (f"--tensorboard needs the tensorboard package ({err}): pip install tensorboard, or "
                "pip install 'dhvc-ext[tensorboard]'")
    return None


class TensorBoardLog:
    """The event files of one session of a run (a resumed run appends a new file; steps are global epochs)."""

    def __init__(self, out):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = out / SUBDIR
        self.writer = SummaryWriter(log_dir=str(self.dir))

    def epoch(self, trainer, dataset, entry, scores=("acc", "nmi", "ari")):
        """Log epoch ``entry`` (a log.jsonl record) of ``trainer`` on ``dataset``."""
        from dhvc_ext.models import LOSS_TERMS

        step, w = int(entry["epoch"]), self.writer
        for term in LOSS_TERMS:
            w.add_scalar(f"loss/{term}", float(entry[term]), step)
        for key, tag in (("samples_per_s", "train/samples_per_s"), ("grad_norm", "train/grad_norm"),
                         ("mixture_loglik", "mixture/loglik")):
            if entry.get(key) is not None:
                w.add_scalar(tag, float(entry[key]), step)
        for s in scores:
            if entry.get(s) is not None:
                w.add_scalar(f"score/{s}", float(entry[s]), step)
        w.add_histogram("concentration/posterior", self._posterior_kappa(trainer, dataset), step)
        if trainer.mixture_initialized:
            w.add_histogram("concentration/mixture", trainer.model.mixture.kappa.detach().double().cpu().numpy(), step)
        w.flush()

    @staticmethod
    def _posterior_kappa(trainer, dataset):
        rows = dataset.features(slice(0, min(len(dataset), HISTOGRAM_ROWS)))
        model, kappas = trainer.model, []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for start in range(0, len(rows), 1024):
                x = torch.as_tensor(rows[start:start + 1024], dtype=torch.float32, device=trainer.device)
                kappas.append(model.encode(x)[1].double().cpu())
        model.train(was_training)
        return torch.cat(kappas).numpy()

    def embedding(self, trainer, mu, labels, classes=None):
        """The latent means mu (N, d) of the run's rows with their cluster ``labels`` (and ``classes``)."""
        m = min(len(mu), EMBEDDING_ROWS)
        if classes is None:
            metadata, header = [str(int(c)) for c in labels[:m]], None
        else:
            metadata = [[str(int(c)), str(y)] for c, y in zip(labels[:m], classes[:m])]
            header = ["cluster", "class"]
        self.writer.add_embedding(np.asarray(mu[:m], dtype=np.float32), metadata=metadata, metadata_header=header,
                                  global_step=int(trainer.epoch), tag="latent_means")
        self.writer.flush()

    def close(self):
        self.writer.close()
