import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def pinned_threads(monkeypatch):
    """Bit-for-bit comparisons of two runs: the thread count pinned (FCNSEG_THREADS), so that
    neither run takes fewer threads because something else ran for a moment
    (fcnseg.threads.StepThreads), which would round the sums otherwise."""
    monkeypatch.setenv("FCNSEG_THREADS", str(torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Measurement caches (fcnseg.amp) go to a temporary folder, never the user's ~/.cache."""
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path_factory.getbasetemp() / "fcnseg_cache"))


def randomize_(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Give every parameter (score layers included) random non-zero values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model
