"""Small random-weight models that follow the adapter contracts, built in the tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF

WORDS = ["a", "red", "blue", "circle", "square", "left", "of", "the", "big", "small"]


class ToyCaptioner(nn.Module):
    """conv-relu-conv-relu encoder (8x6x6 grid) + LSTM decoder with soft attention."""

    def __init__(self, seed: int = 0, split_words: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.vocab = ["<bos>", "<eos>"] + WORDS
        self.embed = nn.Embedding(len(self.vocab), 12)
        self.cell = nn.LSTMCell(12 + 8, 16)
        self.init = nn.Linear(8, 32)
        self.att_f = nn.Linear(8, 10)
        self.att_h = nn.Linear(16, 10)
        self.att_v = nn.Linear(10, 1)
        self.out = nn.Linear(16 + 8, len(self.vocab))
        self.drop = nn.Dropout(0.3)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.split_words = split_words  # "big" is two tokens "bi" + "g" in this mode
        if split_words:
            self.vocab += ["bi", "g"]
            old = self.embed.weight.data
            self.embed = nn.Embedding(len(self.vocab), 12)
            self.embed.weight.data[: old.shape[0]] = old
            self.embed.weight.data[old.shape[0]:] = torch.randn(2, 12, generator=g)
            o = self.out
            self.out = nn.Linear(o.in_features, len(self.vocab))
            self.out.weight.data[: o.out_features] = o.weight.data
            self.out.bias.data[: o.out_features] = o.bias.data
            self.out.weight.data[o.out_features:] = torch.randn(2, o.in_features, generator=g)
            self.out.bias.data[o.out_features:] = 0.1

    @property
    def model(self) -> nn.Module:
        return self

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return TF.to_tensor(image.convert("RGB").resize((24, 24))).unsqueeze(0)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels)

    def _step(self, feats, tok, state):
        B, C = feats.shape[:2]
        f = feats.flatten(2).transpose(1, 2)  # B, hw, C
        h, c = state
        e = self.att_v(torch.tanh(self.att_f(f) + self.att_h(h)[:, None])).squeeze(-1)
        a = torch.softmax(e, dim=1)
        ctx = (a.unsqueeze(-1) * f).sum(1)
        h, c = self.cell(torch.cat([self.drop(self.embed(tok)), ctx], 1), (h, c))
        return F.log_softmax(self.out(torch.cat([h, ctx], 1)), dim=1), (h, c)

    def _start(self, feats):
        h, c = torch.tanh(self.init(feats.mean((2, 3)))).chunk(2, dim=1)
        return h.contiguous(), c.contiguous()

    def score_tokens(self, feats, token_ids):
        B, T = token_ids.shape
        state = self._start(feats)
        prev = torch.zeros(B, dtype=torch.long, device=feats.device)
        out = []
        for t in range(T):
            lp, state = self._step(feats, prev, state)
            out.append(lp.gather(1, token_ids[:, t : t + 1]))
            prev = token_ids[:, t]
        return torch.cat(out, 1)

    def generate(self, feats, max_len=20, beam_size=1):
        state = self._start(feats)
        prev = torch.zeros(1, dtype=torch.long, device=feats.device)
        ids = []
        for _ in range(max_len):
            lp, state = self._step(feats, prev, state)
            lp[:, 0] = -float("inf")
            prev = lp.argmax(1)
            if int(prev) == 1:
                break
            ids.append(int(prev))
        return torch.tensor([ids], dtype=torch.long)

    def tokenize(self, text):
        toks = []
        for w in text.lower().split():
            if self.split_words and w == "big":
                toks += [self.vocab.index("bi"), self.vocab.index("g")]
            else:
                toks.append(self.vocab.index(w))
        return torch.tensor(toks, dtype=torch.long)

    def word_index(self, ids):
        out, w = [], -1
        for t in ids.tolist():
            if self.vocab[t] != "g":
                w += 1
            out.append(w)
        return out

    def words(self, ids):
        out = []
        for t in ids.tolist():
            tok = self.vocab[t]
            if tok == "g" and out:
                out[-1] += "g"
            else:
                out.append(tok)
        return out


class ToyVQA(nn.Module):
    """conv encoder + GRU question encoder, element-wise product fusion, answer classifier."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.qvocab = ["<pad>", "<unk>", "what", "color", "is", "the", "circle", "square", "?"]
        self.answers = ["red", "blue", "green", "yes", "no", "1", "2"]
        self.embed = nn.Embedding(len(self.qvocab), 8)
        self.rnn = nn.GRU(8, 8, batch_first=True)
        self.img = nn.Linear(8, 8)
        self.head = nn.Linear(8, len(self.answers))
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)

    @property
    def model(self) -> nn.Module:
        return self

    def prepare(self, image):
        return TF.to_tensor(image.convert("RGB").resize((24, 24))).unsqueeze(0)

    def encode(self, pixels):
        return self.encoder(pixels)

    def tokenize_question(self, q):
        ids, unk = [], []
        for w in q.lower().replace("?", " ?").split():
            if w in self.qvocab:
                ids.append(self.qvocab.index(w))
            else:
                ids.append(1)
                unk.append(w)
        return torch.tensor(ids, dtype=torch.long), unk

    def score_answers(self, feats, q):
        _, h = self.rnn(self.embed(q))
        v = torch.tanh(self.img(feats.amax((2, 3)) + feats.mean((2, 3))))
        return F.log_softmax(self.head(v * h[0]), dim=1)


def image(seed: int = 0, size: tuple[int, int] = (40, 30)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


class ToyViTCaptioner(nn.Module):
    """A whole-model captioner (no ``encode`` split): ViT tower (4x4 patches + CLS, two
    transformer blocks) and a causal transformer decoder cross-attending its tokens.

    ``score_tokens(pixels, ids)`` runs the whole model; pixels may have batch 1 for any
    number of id rows (the image tokens are broadcast), as Hugging Face models allow.
    """

    layer = "vision.layers[-1]"

    def __init__(self, seed: int = 0, size: int = 16, crop: bool = False) -> None:
        super().__init__()
        from mmcam.layers import Tokens

        torch.manual_seed(seed)
        d = 16
        self.size, self.crop = size, crop
        self.layout = Tokens(prefix=1)
        self.vocab = ["<bos>", "<eos>"] + WORDS
        self.vision = nn.Module()
        self.vision.patch = nn.Conv2d(3, d, 4, stride=4)
        self.vision.cls = nn.Parameter(torch.randn(1, 1, d))
        self.vision.pos = nn.Parameter(torch.randn(1, 1 + (size // 4) ** 2, d) * 0.5)
        self.vision.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, 2, 32, dropout=0.1, batch_first=True)
            for _ in range(2)
        )
        self.embed = nn.Embedding(len(self.vocab), d)
        self.text_pos = nn.Parameter(torch.randn(1, 24, d) * 0.5)
        self.decoder = nn.TransformerDecoderLayer(d, 2, 32, dropout=0.1, batch_first=True)
        self.out = nn.Linear(d, len(self.vocab))

    def prepare(self, image: Image.Image):
        from mmcam.geometry import Geometry

        g = Geometry.identity(image.size)
        if self.crop:  # shorter side to `size`, then a centre crop: geometry recorded
            g = g.resize_short(self.size)
            im = image.convert("RGB").resize(g.input_size, Image.BILINEAR)
            g = g.center_crop((self.size, self.size))
            im = TF.center_crop(im, [self.size, self.size])
        else:
            g = g.resize((self.size, self.size))
            im = image.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        p = next(self.parameters())
        return TF.to_tensor(im).unsqueeze(0).to(p.device, p.dtype), g

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.vision.patch(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.vision.cls.expand(x.shape[0], -1, -1), x], 1) + self.vision.pos
        for blk in self.vision.layers:
            x = blk(x)
        return x

    def logits(self, memory: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([torch.zeros_like(ids[:, :1]), ids[:, :-1]], 1)
        T = inp.shape[1]
        mask = torch.triu(torch.full((T, T), float("-inf"), device=ids.device), 1)
        if memory.shape[0] != ids.shape[0]:
            memory = memory.expand(ids.shape[0], -1, -1)
        h = self.decoder(self.embed(inp) + self.text_pos[:, :T], memory, tgt_mask=mask.to(
            memory.dtype))
        return self.out(h).float()

    def score_tokens(self, pixels: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        lp = self.logits(self.image_tokens(pixels), token_ids).log_softmax(-1)
        return lp.gather(2, token_ids[..., None])[..., 0]

    @torch.no_grad()
    def generate(self, pixels, max_len=20, beam_size=1):
        mem = self.image_tokens(pixels)
        ids = torch.zeros(1, 0, dtype=torch.long, device=pixels.device)
        for _ in range(max_len):
            probe = F.pad(ids, (0, 1))
            lp = self.logits(mem, probe)[0, -1]
            lp[:2] = -float("inf") if ids.shape[1] < 3 else lp[:2]
            lp[0] = -float("inf")
            nxt = int(lp.argmax())
            if nxt == 1:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]], device=pixels.device)], 1)
        return ids

    def tokenize(self, text):
        return torch.tensor([self.vocab.index(w) for w in text.lower().split()])

    def words(self, ids):
        return [self.vocab[int(t)] for t in ids]
