import torch
import pytest


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_line_error(capsys):
    """Check that `hawq ARGV` fails with exit 2 and one `hawq: error:` line holding every needle."""
    from hawq import cli

    def check(argv, *needles):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("hawq: error:") and "\n" not in err, err
        for n in needles:
            assert n in err, err
    return check
