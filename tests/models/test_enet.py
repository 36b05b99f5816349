import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from enet_serve.models import get_model, get_spec
from enet_serve.models.enet import ConvBNAct, ENet, max_unpool2x


@pytest.fixture(scope="module")
def enet():
    torch.manual_seed(0)
    return get_model("enet").eval()


def test_parameter_count_is_the_papers():
    # The paper: 0.37 M parameters; 0.35-0.40 M with 12 outputs.
    assert 350_000 <= sum(p.numel() for p in ENet(num_classes=12).parameters()) <= 400_000
    assert sum(p.numel() for p in get_model("enet").parameters()) == get_spec("enet").params


def test_output_at_native_size(enet):
    with torch.no_grad():
        out = enet(torch.randn(2, 3, 360, 480))
    assert out.shape == (2, 11, 360, 480)


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (33, 200)])
def test_any_size_is_padded_and_cropped_back(enet, size):
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = enet(x)
        assert out.shape == (1, 11, *size)
        # Padding happens on the bottom/right only: the result equals running on the padded input.
        h, w = size
        padded = F.pad(x, (0, (-w) % 8, 0, (-h) % 8))
        torch.testing.assert_close(out, enet(padded)[..., :h, :w])


def test_unpooling_equals_max_unpool2d():
    x = torch.randn(2, 5, 16, 24)
    pooled, indices = F.max_pool2d(x, 2, stride=2, return_indices=True)
    assert torch.equal(max_unpool2x(pooled, indices), F.max_unpool2d(pooled, indices, 2))


def test_structure_follows_table_1(enet):
    prelu = [m for m in enet.initial.modules() if isinstance(m, torch.nn.PReLU)]
    assert prelu, "the encoder uses PReLU"
    decoder = [*enet.up4.modules(), *enet.stage4.modules(), *enet.up5.modules(), *enet.stage5.modules()]
    assert not any(isinstance(m, torch.nn.PReLU) for m in decoder), "the decoder uses ReLU"
    kinds = [b.conv[0].dilation[0] if isinstance(b.conv, ConvBNAct) else b.conv[0][0].kernel_size for b in enet.stage2]
    assert kinds == [1, 2, (5, 1), 4, 1, 8, (5, 1), 16]
    assert enet.stage1[0].dropout.p == 0.01 and enet.stage2[0].dropout.p == 0.1
    assert not any(isinstance(m, torch.nn.MaxUnpool2d) for m in enet.modules())
    assert enet.fullconv.kernel_size == (2, 2) and enet.fullconv.stride == (2, 2)


def test_spec_gflops_is_measured():
    spec = get_spec("enet")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        get_model("enet").eval()(torch.zeros(1, 3, *spec.input_size))
    assert counter.get_total_flops() / 1e9 == pytest.approx(spec.gflops, rel=0.01)
