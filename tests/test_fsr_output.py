"""The FSR module's analysis option: which feature it passes on (f~, f+, f-, f~-), off by default."""
import pytest
import torch

from conftest import tiny_fsr_net
from fsr_hub.fsr import FSR, FSR_OUTPUTS, fsr_output


def _parts(fsr: FSR, f: torch.Tensor):
    m = torch.sigmoid(fsr.separation(f) / fsr.tau)  # eval-mode mask (Eq. 2 with g1 = g2)
    f_pos, f_neg = m * f, (1 - m) * f
    f_rec = f_neg + (1 - m) * fsr.recalibration(f_neg)
    return {'final': f_pos + f_rec, 'robust': f_pos, 'non_robust': f_neg, 'recalibrated': f_rec}


@pytest.mark.parametrize('output', FSR_OUTPUTS)
def test_each_output_is_its_feature_and_aux_is_unchanged(output):
    torch.manual_seed(0)
    fsr = FSR(8, num_classes=3).eval()
    f = torch.randn(2, 8, 4, 4)
    _, aux_default = fsr(f, need_aux=True)
    fsr.output = output
    out, aux = fsr(f, need_aux=True)
    torch.testing.assert_close(out, _parts(fsr, f)[output])
    torch.testing.assert_close(fsr(f)[0], out)  # eval mode: deterministic
    for name in ('mask', 'logits_pos', 'logits_neg', 'logits_rec'):
        torch.testing.assert_close(getattr(aux, name), getattr(aux_default, name))


def test_default_is_final_and_state_dict_is_unchanged():
    fsr = FSR(8, num_classes=3)
    assert fsr.output == 'final' and 'output' not in repr(fsr)
    keys = list(fsr.state_dict())
    assert not any('tap' in k for k in keys)
    fsr.output = 'non_robust'
    assert list(fsr.state_dict()) == keys and "output='non_robust'" in repr(fsr)
    assert FSR(8, 3, output='robust').output == 'robust'


def test_invalid_outputs_are_refused():
    with pytest.raises(ValueError, match='must be one of'):
        FSR(8, 3).output = 'f+'
    with pytest.raises(ValueError, match='Separation'):
        FSR(8, 3, separation=False).output = 'robust'
    with pytest.raises(ValueError, match='Recalibration'):
        FSR(8, 3, recalibration=False, output='recalibrated')


def test_context_manager_swaps_and_restores_even_on_error():
    model = tiny_fsr_net().eval()
    x = torch.rand(3, 3, 32, 32)
    ref = model(x)
    stage = model.s2(model.s1(model.stem(x)))
    expected = model.fc(_parts(model.fsr['s2'], stage)['robust'].mean((2, 3)))
    with fsr_output(model, 'robust', positions=['s2']):
        torch.testing.assert_close(model(x), expected)
    assert model.fsr['s2'].output == 'final'
    torch.testing.assert_close(model(x), ref)
    with pytest.raises(RuntimeError, match='boom'), fsr_output(model, 'non_robust'):
        raise RuntimeError('boom')
    assert model.fsr['s2'].output == 'final'
    with pytest.raises(ValueError, match='no FSR module'):
        with fsr_output(tiny_fsr_net(fsr_positions=()), 'robust'):
            pass
    with pytest.raises(ValueError, match='position'):
        with fsr_output(model, 'robust', positions=['s1']):
            pass


def test_tap_sees_the_passed_on_feature():
    model = tiny_fsr_net().eval()
    x = torch.rand(2, 3, 32, 32)
    seen = []
    handle = model.fsr['s2'].tap.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with fsr_output(model, 'recalibrated'):
            feats = model.forward_features(x)
    finally:
        handle.remove()
    torch.testing.assert_close(seen[0], feats)
