"""Your own CNN+LSTM captioner, explained word by word with mmcam.

A Show-and-Tell captioner (Vinyals et al. 2015): a torchvision ResNet encoder and an LSTM
decoder whose first input is the pooled image feature. mmcam needs nothing but the six
adapter methods below; the explained layer is what ``encode`` returns (``layer4``, 7x7).

    python demos/custom_captioner.py [OUT_DIR] [--image PATH] [--caption TEXT]
"""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict

import torch
import torchvision
from PIL import Image
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torchvision.transforms import functional as TF

from mmcam.caption import CaptionExplainer

SPECIALS = ["<bos>", "<eos>", "<unk>"]
BOS, EOS, UNK = 0, 1, 2
COMMON = ("a an the of on in with and at to is are two man woman person people dog cat bird "
          "horse car bus train table bed grass field street water sitting standing lying "
          "white black brown red blue green small large top next near front").split()


def default_vocab(size: int = 1000) -> list[str]:
    """A stand-in for your training vocabulary: common words, then ``word<i>`` fillers."""
    return COMMON + [f"word{i}" for i in range(size - len(COMMON))]


class ResNetLSTMCaptioner(nn.Module):
    """ResNet up to ``layer4`` + LSTM decoder; ``min_len``: no <eos> before that many words."""

    def __init__(self, vocab: list[str], resnet: str = "resnet50", embed: int = 512,
                 hidden: int = 512, size: int = 224, min_len: int = 0) -> None:
        super().__init__()
        cnn = getattr(torchvision.models, resnet)(weights=None)
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        self.encoder = nn.Sequential(OrderedDict((n, getattr(cnn, n)) for n in names))
        self.itos = SPECIALS + list(vocab)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.image_in = nn.Linear(cnn.fc.in_features, embed)
        self.embed = nn.Embedding(len(self.itos), embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.out = nn.Linear(hidden, len(self.itos))
        self.size, self.min_len = size, min_len

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> (1,3,size,size): bilinear resize, ImageNet mean/std normalization."""
        x = TF.to_tensor(image.convert("RGB").resize((self.size, self.size), Image.BILINEAR))
        return TF.normalize(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).unsqueeze(0)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B,3,224,224) -> ``layer4`` features (B,2048,7,7) (resnet50)."""
        return self.encoder(pixels)

    def _start(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LSTM state (h, c), each (1,B,hidden), after its first input x, the average-pooled
        image feature, from the zero state: with z = W_ih x + b_ih + b_hh split into gates
        (i, f, g, o), c = sigmoid(i) tanh(g) and h = sigmoid(o) tanh(c) (f multiplies c0 = 0).
        The same as ``self.lstm(x[:, None])``'s state (to float rounding), written out
        because nn.LSTM's fused CPU kernel costs more than this one matmul for one step."""
        x = self.image_in(features.mean(dim=(2, 3)))
        lstm = self.lstm
        z = torch.addmm(lstm.bias_ih_l0 + lstm.bias_hh_l0, x, lstm.weight_ih_l0.t())
        i, _, g, o = z.chunk(4, dim=1)
        c = torch.sigmoid(i) * torch.tanh(g)
        return (torch.sigmoid(o) * torch.tanh(c))[None], c[None]

    def score_tokens(self, features: torch.Tensor, token_ids: torch.Tensor,
                     last: torch.Tensor | None = None) -> torch.Tensor:
        """(B,C,h,w), (B,T) -> (B,T): log p(token_t | <bos>, tokens_<t, image).

        Optional ``last`` (B,): row b's scores after position ``last[b]`` are not needed
        (mmcam passes it); on a CPU the LSTM then runs on packed sequences of ``last + 1``
        steps and projects only those positions, the rest of the row being 0.
        """
        inputs = torch.cat([torch.full_like(token_ids[:, :1], BOS), token_ids[:, :-1]], dim=1)
        state = self._start(features)
        if last is None or features.is_cuda:  # packing pays on a CPU, not on a GPU (measured)
            h, _ = self.lstm(self.embed(inputs), state)
            return torch.log_softmax(self.out(h), -1).gather(2, token_ids[..., None])[..., 0]
        lengths = (last + 1).cpu()
        packed = pack_padded_sequence(self.embed(inputs), lengths, batch_first=True,
                                      enforce_sorted=False)
        h, _ = self.lstm(packed, state)
        targets = pack_padded_sequence(token_ids, lengths, batch_first=True,
                                       enforce_sorted=False).data
        lp = torch.log_softmax(self.out(h.data), -1).gather(1, targets[:, None])[:, 0]
        out, _ = pad_packed_sequence(h._replace(data=lp), batch_first=True,
                                     total_length=token_ids.shape[1])
        return out

    @torch.no_grad()
    def generate(self, features: torch.Tensor, max_len: int = 20, beam_size: int = 1,
                 min_len: int | None = None) -> torch.Tensor:
        """(1,C,h,w) -> ids (1,T): greedy (beam_size=1) or beam search, <eos> excluded."""
        min_len = self.min_len if min_len is None else min_len
        beams = [(0.0, [], self._start(features))]
        done: list[tuple[float, list[int]]] = []
        for step in range(max_len):
            cand = []
            for score, toks, state in beams:
                prev = torch.tensor([[toks[-1] if toks else BOS]], device=features.device)
                h, new = self.lstm(self.embed(prev), state)
                lp = torch.log_softmax(self.out(h[0, -1]), -1)
                lp[BOS] = -float("inf")
                if step < min_len:
                    lp[EOS] = -float("inf")
                for v, i in zip(*lp.topk(beam_size)):
                    if int(i) == EOS:
                        done.append((score + float(v), toks))
                    else:
                        cand.append((score + float(v), toks + [int(i)], new))
            beams = sorted(cand, key=lambda b: -b[0])[:beam_size]
            if not beams or (done and max(d[0] for d in done) >= beams[0][0]):
                break  # log-probs only fall: no open beam can beat the best finished one
        best = max(done + [(s, t) for s, t, _ in beams], key=lambda d: d[0])[1]
        return torch.tensor([best], dtype=torch.long).reshape(1, -1)

    def tokenize(self, text: str) -> torch.Tensor:
        """Caption -> ids (T,): lowercased words, unknown ones -> <unk>."""
        return torch.tensor([self.stoi.get(w, UNK) for w in text.lower().split()])

    def words(self, token_ids: torch.Tensor) -> list[str]:
        """Ids (T,) -> words (one token is one word)."""
        return [self.itos[int(i)] for i in token_ids.reshape(-1)]


def main(argv: list[str] | None = None) -> None:
    """Build a random-weight captioner, explain its caption of a photo, save the result."""
    import skimage  # only to find a photo that ships with scikit-image

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="out/custom_captioner")
    p.add_argument("--image", default=os.path.join(os.path.dirname(skimage.__file__), "data",
                                                   "chelsea.png"))
    p.add_argument("--caption", default=None, help="explain this caption instead of generating")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = ResNetLSTMCaptioner(default_vocab(), min_len=6)  # random weights (no downloads)
    result = CaptionExplainer(model, method="gradcam").explain(args.image, args.caption,
                                                               max_len=12)
    result.save(args.out)
    print(f"caption: {result.caption}")
    for word, lp, box in zip(result.words, result.logprobs, result.boxes):
        print(f"  {word:>12s}  log p = {lp:7.3f}  box = {box}")
    print(f"saved to {args.out}/ (index.html, grid.png, one PNG per word, result.json)")


if __name__ == "__main__":
    main()
