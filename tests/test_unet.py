import pytest
import torch

from napari_cellunet.unet import UNet, UNetConfig, count_parameters


@pytest.mark.parametrize("up_mode", ["transpose", "interpolate"])
@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (5, 130)])
def test_2d_any_size(shape, up_mode):
    net = UNet(UNetConfig(dims=2, depth=3, base_channels=4, up_mode=up_mode)).eval()
    out = net(torch.rand(2, 1, *shape))
    assert out.shape == (2, 3, *shape)


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_3d_odd_size(norm):
    net = UNet(UNetConfig(dims=3, depth=2, base_channels=4, norm=norm)).eval()
    out = net(torch.rand(1, 1, 9, 21, 17))
    assert out.shape == (1, 3, 9, 21, 17)


def test_skip_connections_carry_detail():
    """The output at a pixel depends on the input at that pixel (the full-resolution skip works)."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(dims=2, depth=2, base_channels=4)).eval()
    x = torch.zeros(1, 1, 80, 80)
    y0 = net(x)
    x[0, 0, 10, 10] = 5.0
    diff = (net(x) - y0).abs().sum(1)[0]
    assert diff[10, 10] > 0
    assert diff[70, 70] == 0  # beyond the receptive field of a depth-2 net


def test_config_roundtrip_and_validation():
    cfg = UNetConfig(dims=3, in_channels=2, depth=3, base_channels=8, up_mode="interpolate", norm="group")
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    assert count_parameters(UNet(cfg)) > 0
    with pytest.raises(ValueError):
        UNetConfig(dims=4)
    with pytest.raises(ValueError):
        UNetConfig(norm="layer")
    with pytest.raises(ValueError, match="expected a 4D tensor"):
        UNet(UNetConfig(dims=2)).eval()(torch.rand(1, 1, 8, 8, 8))
