import pytest

from datasets.synthetic_mssl import generate


@pytest.fixture(scope='session')
def tiny_mssl(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp('tiny_mssl')
    generate(str(root), train_ids=8, test_ids=4, images_per_view=4, seed=3, overwrite=True)
    return str(root)
