"""Transcription of the official LNLN modules (Haoyu-ha/LNLN @ 80a052c62b7b3b7a6cb6956846e9d9c121f56eda):
``models/basic_layers.py`` (the classes LNLN uses), ``models/lnln.py`` (``LNLN``), ``models/bert.py``
(``BertTextEncoder``, given a ``BertModel`` instead of a name to download), ``core/losses.py``
(``MultimodalLoss``) and ``core/dataset.py`` (``generate_m``, a method there, a function here).

Copied line for line; the changes are marked ``# transcription:``. einops is not a dependency of the suite:
``rearrange``/``repeat`` below implement exactly the five patterns these files use.
"""

# ruff: noqa
import numpy as np
import torch
from torch import nn, einsum


# --- einops, the patterns used ----------------------------------------------------------------------------
def rearrange(t, pattern, h=None):
    if pattern == "b n (h d) -> b h n d":
        b, n, hd = t.shape
        return t.reshape(b, n, h, hd // h).permute(0, 2, 1, 3)
    if pattern == "b h n d -> b n (h d)":
        b, hh, n, d = t.shape
        return t.permute(0, 2, 1, 3).reshape(b, n, hh * d)
    if pattern == "b n d -> (b n) d":
        return t.reshape(-1, t.shape[-1])
    raise NotImplementedError(pattern)


def repeat(t, pattern, b):
    assert pattern in ("1 n d -> b n d", "1 1 d -> b 1 d")
    return t.expand(b, -1, -1)


# --- models/basic_layers.py -------------------------------------------------------------------------------
class GradientReversalFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        output = grad_output.neg() * ctx.alpha
        return output, None


class GradientReversalLayer(nn.Module):
    def __init__(self, alpha=1.0):
        super(GradientReversalLayer, self).__init__()
        self.alpha = alpha

    def forward(self, x):
        return GradientReversalFn.apply(x, self.alpha)


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x, **kwargs):
        return self.fn(self.norm(x), **kwargs)


class PreNorm_qkv(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_k = nn.LayerNorm(dim)
        self.norm_v = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, q, k, v, **kwargs):
        q = self.norm_q(q)
        k = self.norm_k(k)
        v = self.norm_v(v)

        return self.fn(q, k, v)


class PreNorm_hyper(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, h_dominate, h_a, h_v, h_hyper):
        h_dominate = self.norm1(h_dominate)
        h_a = self.norm2(h_a)
        h_v = self.norm3(h_v)
        h_hyper = self.norm4(h_hyper)

        return self.fn(h_dominate, h_a, h_v, h_hyper)


class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim, dropout=0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    def __init__(self, dim, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner_dim = dim_head * heads
        project_out = not (heads == 1 and dim_head == dim)

        self.heads = heads
        self.scale = dim_head**-0.5

        self.attend = nn.Softmax(dim=-1)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_k = nn.Linear(dim, inner_dim, bias=False)
        self.to_v = nn.Linear(dim, inner_dim, bias=False)

        self.to_out = (
            nn.Sequential(nn.Linear(inner_dim, dim), nn.Dropout(dropout)) if project_out else nn.Identity()
        )

    def forward(self, q, k, v):
        b, n, _, h = *q.shape, self.heads

        q = self.to_q(q)
        k = self.to_k(k)
        v = self.to_v(v)

        q, k, v = map(lambda t: rearrange(t, "b n (h d) -> b h n d", h=h), (q, k, v))
        dots = einsum("b h i d, b h j d -> b h i j", q, k) * self.scale

        attn = self.attend(dots)

        out = einsum("b h i j, b h j d -> b h i d", attn, v)
        out = rearrange(out, "b h n d -> b n (h d)")

        return self.to_out(out)


class HhyperLearningLayer(nn.Module):
    def __init__(self, dim, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner_dim = dim_head * heads
        project_out = not (heads == 1 and dim_head == dim)

        self.heads = heads
        self.scale = dim_head**-0.5

        self.attend = nn.Softmax(dim=-1)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_k_ta = nn.Linear(dim, inner_dim, bias=False)
        self.to_k_tv = nn.Linear(dim, inner_dim, bias=False)
        self.to_v_ta = nn.Linear(dim, inner_dim, bias=False)
        self.to_v_tv = nn.Linear(dim, inner_dim, bias=False)

        self.to_out = (
            nn.Sequential(nn.Linear(inner_dim, dim, bias=True), nn.Dropout(dropout))
            if project_out
            else nn.Identity()
        )

    def forward(self, h_dominate, h_a, h_v, h_hyper):
        h = self.heads

        q = self.to_q(h_dominate)
        k_a = self.to_k_ta(h_a)
        k_v = self.to_k_tv(h_v)

        v_a = self.to_v_ta(h_a)
        v_v = self.to_v_tv(h_v)

        q, k_a, k_v, v_a, v_v = map(
            lambda t: rearrange(t, "b n (h d) -> b h n d", h=h), (q, k_a, k_v, v_a, v_v)
        )

        dots_q_ka = einsum("b h i d, b h j d -> b h i j", q, k_a) * self.scale
        attn_q_ka = self.attend(dots_q_ka)
        out_q_ka = einsum("b h i j, b h j d -> b h i d", attn_q_ka, v_a)
        out_q_ka = rearrange(out_q_ka, "b h n d -> b n (h d)")

        dots_q_kv = einsum("b h i d, b h j d -> b h i j", q, k_v) * self.scale
        attn_q_kv = self.attend(dots_q_kv)
        out_q_kv = einsum("b h i j, b h j d -> b h i d", attn_q_kv, v_v)
        out_q_kv = rearrange(out_q_kv, "b h n d -> b n (h d)")

        h_hyper_shift = self.to_out(out_q_ka + out_q_kv)
        h_hyper += h_hyper_shift

        return h_hyper


class HhyperLearningEncoder(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, dropout=0.0):
        super().__init__()
        self.layers = nn.ModuleList([])
        for _ in range(depth):
            self.layers.append(
                nn.ModuleList(
                    [
                        PreNorm_hyper(
                            dim, HhyperLearningLayer(dim, heads=heads, dim_head=dim_head, dropout=dropout)
                        )
                    ]
                )
            )

    def forward(self, h_domonate_list, h_a, h_v, h_hyper):
        for i, attn in enumerate(self.layers):
            h_hyper = attn[0](h_domonate_list[i], h_a, h_v, h_hyper)
        return h_hyper


class TransformerEncoder(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout=0.0):
        super().__init__()
        self.layers = nn.ModuleList([])
        for _ in range(depth):
            self.layers.append(
                nn.ModuleList(
                    [
                        PreNorm_qkv(dim, Attention(dim, heads=heads, dim_head=dim_head, dropout=dropout)),
                        PreNorm(dim, FeedForward(dim, mlp_dim, dropout=dropout)),
                    ]
                )
            )

    def forward(self, x, save_hidden=False):
        if save_hidden == True:
            hidden_list = []
            hidden_list.append(x)
            for attn, ff in self.layers:
                x = attn(x, x, x) + x
                x = ff(x) + x
                hidden_list.append(x)
            return hidden_list
        else:
            for attn, ff in self.layers:
                x = attn(x, x, x) + x
                x = ff(x) + x
            return x


class CrossTransformerEncoder(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout=0.0):
        super().__init__()
        self.layers = nn.ModuleList([])
        for _ in range(depth):
            self.layers.append(
                nn.ModuleList(
                    [
                        PreNorm_qkv(dim, Attention(dim, heads=heads, dim_head=dim_head, dropout=dropout)),
                        PreNorm(dim, FeedForward(dim, mlp_dim, dropout=dropout)),
                    ]
                )
            )

    def forward(self, source_x, target_x):
        for attn, ff in self.layers:
            target_x_tmp = attn(target_x, source_x, source_x)
            target_x = target_x_tmp + target_x
            target_x = ff(target_x) + target_x
        return target_x


class Transformer(nn.Module):
    def __init__(self, *, num_frames, token_len, save_hidden, dim, depth, heads, mlp_dim, pool="cls", channels=3,
                 dim_head=64, dropout=0.0, emb_dropout=0.0):  # fmt: skip
        super().__init__()

        self.token_len = token_len
        self.save_hidden = save_hidden

        if token_len is not None:
            self.pos_embedding = nn.Parameter(torch.randn(1, num_frames + token_len, dim))
            self.extra_token = nn.Parameter(torch.zeros(1, token_len, dim))
        else:
            self.pos_embedding = nn.Parameter(torch.randn(1, num_frames, dim))
            self.extra_token = None

        self.dropout = nn.Dropout(emb_dropout)

        self.encoder = TransformerEncoder(dim, depth, heads, dim_head, mlp_dim, dropout)

        self.pool = pool
        self.to_latent = nn.Identity()

    def forward(self, x):
        b, n, _ = x.shape

        if self.token_len is not None:
            extra_token = repeat(self.extra_token, "1 n d -> b n d", b=b)
            x = torch.cat((extra_token, x), dim=1)
            x = x + self.pos_embedding[:, : n + self.token_len]
        else:
            x = x + self.pos_embedding[:, :n]

        x = self.dropout(x)
        x = self.encoder(x, self.save_hidden)

        return x


class CrossTransformer(nn.Module):
    def __init__(self, *, source_num_frames, tgt_num_frames, dim, depth, heads, mlp_dim, pool="cls", dim_head=64,
                 dropout=0.0, emb_dropout=0.0):  # fmt: skip
        super().__init__()

        self.pos_embedding_s = nn.Parameter(torch.randn(1, source_num_frames + 1, dim))
        self.pos_embedding_t = nn.Parameter(torch.randn(1, tgt_num_frames + 1, dim))
        self.extra_token = nn.Parameter(torch.zeros(1, 1, dim))

        self.dropout = nn.Dropout(emb_dropout)

        self.CrossTransformerEncoder = CrossTransformerEncoder(dim, depth, heads, dim_head, mlp_dim, dropout)

        self.pool = pool

    def forward(self, source_x, target_x):
        b, n_s, _ = source_x.shape
        b, n_t, _ = target_x.shape

        extra_token = repeat(self.extra_token, "1 1 d -> b 1 d", b=b)

        source_x = torch.cat((extra_token, source_x), dim=1)
        source_x = source_x + self.pos_embedding_s[:, : n_s + 1]

        target_x = torch.cat((extra_token, target_x), dim=1)
        target_x = target_x + self.pos_embedding_t[:, : n_t + 1]

        source_x = self.dropout(source_x)
        target_x = self.dropout(target_x)

        x_s2t = self.CrossTransformerEncoder(source_x, target_x)

        return x_s2t


# --- models/bert.py ---------------------------------------------------------------------------------------
class BertTextEncoder(nn.Module):
    def __init__(self, bert_model, use_finetune=False):  # transcription: the BertModel itself, no download
        super().__init__()
        self.model = bert_model
        self.use_finetune = use_finetune

    def forward(self, text):
        input_ids, input_mask, segment_ids = text[:, 0, :].long(), text[:, 1, :].float(), text[:, 2, :].long()
        if self.use_finetune:
            last_hidden_states = self.model(
                input_ids=input_ids, attention_mask=input_mask, token_type_ids=segment_ids
            )[0]
        else:
            with torch.no_grad():
                last_hidden_states = self.model(
                    input_ids=input_ids, attention_mask=input_mask, token_type_ids=segment_ids
                )[0]
        return last_hidden_states


# --- models/lnln.py ---------------------------------------------------------------------------------------
class LNLN(nn.Module):
    def __init__(self, args, bert_model):  # transcription: the BertModel is given
        super(LNLN, self).__init__()

        # transcription: the code's literal width 128 is args["HIDDEN"] (the tiny test's width)
        self.h_hyper = nn.Parameter(
            torch.ones(1, args["model"]["feature_extractor"]["token_length"][0], args["HIDDEN"])
        )
        self.h_p = nn.Parameter(
            torch.ones(1, args["model"]["feature_extractor"]["token_length"][0], args["HIDDEN"])
        )

        self.bertmodel = BertTextEncoder(bert_model, use_finetune=True)

        fe = args["model"]["feature_extractor"]
        self.proj_l = nn.Sequential(
            nn.Linear(fe["input_dims"][0], fe["hidden_dims"][0]),
            Transformer(num_frames=fe["input_length"][0], save_hidden=False, token_len=fe["token_length"][0],
                        dim=fe["hidden_dims"][0], depth=fe["depth"], heads=fe["heads"], mlp_dim=fe["hidden_dims"][0]),
        )  # fmt: skip
        self.proj_a = nn.Sequential(
            nn.Linear(fe["input_dims"][2], fe["hidden_dims"][2]),
            Transformer(num_frames=fe["input_length"][2], save_hidden=False, token_len=fe["token_length"][2],
                        dim=fe["hidden_dims"][2], depth=fe["depth"], heads=fe["heads"], mlp_dim=fe["hidden_dims"][2]),
        )  # fmt: skip
        self.proj_v = nn.Sequential(
            nn.Linear(fe["input_dims"][1], fe["hidden_dims"][1]),
            Transformer(num_frames=fe["input_length"][1], save_hidden=False, token_len=fe["token_length"][1],
                        dim=fe["hidden_dims"][1], depth=fe["depth"], heads=fe["heads"], mlp_dim=fe["hidden_dims"][1]),
        )  # fmt: skip

        dmc = args["model"]["dmc"]
        pdg = dmc["proxy_dominant_feature_generator"]
        self.proxy_dominate_modality_generator = Transformer(
            num_frames=pdg["input_length"], save_hidden=False, token_len=pdg["token_length"], dim=pdg["input_dim"],
            depth=pdg["depth"], heads=pdg["heads"], mlp_dim=pdg["hidden_dim"],
        )  # fmt: skip

        self.GRL = GradientReversalLayer(alpha=1.0)

        ed = dmc["effectiveness_discriminator"]
        self.effective_discriminator = nn.Sequential(
            nn.Linear(ed["input_dim"], ed["hidden_dim"]),
            nn.LeakyReLU(0.1),
            nn.Linear(ed["hidden_dim"], ed["out_dim"]),
        )

        cc = dmc["completeness_check"]
        self.completeness_check = nn.ModuleList(
            [
                Transformer(num_frames=cc["input_length"], save_hidden=False, token_len=cc["token_length"],
                            dim=cc["input_dim"], depth=cc["depth"], heads=cc["heads"], mlp_dim=cc["hidden_dim"]),
                nn.Sequential(
                    nn.Linear(cc["hidden_dim"], int(cc["hidden_dim"] / 2)),
                    nn.LeakyReLU(0.1),
                    nn.Linear(int(cc["hidden_dim"] / 2), 1),
                    nn.Sigmoid(),
                ),
            ]
        )  # fmt: skip

        rc = args["model"]["reconstructor"]
        self.reconstructor = nn.ModuleList(
            [
                Transformer(num_frames=rc["input_length"], save_hidden=False, token_len=None, dim=rc["input_dim"],
                            depth=rc["depth"], heads=rc["heads"], mlp_dim=rc["hidden_dim"])
                for _ in range(3)
            ]
        )  # fmt: skip

        dm = args["model"]["dmml"]
        le, hm, ft = dm["language_encoder"], dm["hyper_modality_learning"], dm["fuison_transformer"]
        self.dmml = nn.ModuleList(
            [
                Transformer(num_frames=le["input_length"], save_hidden=True, token_len=None, dim=le["input_dim"],
                            depth=le["depth"], heads=le["heads"], mlp_dim=le["hidden_dim"]),
                HhyperLearningEncoder(dim=hm["input_dim"], dim_head=int(hm["input_dim"] / hm["heads"]),
                                      depth=hm["depth"], heads=hm["heads"]),
                CrossTransformer(source_num_frames=ft["source_length"], tgt_num_frames=ft["tgt_length"],
                                 dim=ft["input_dim"], depth=ft["depth"], heads=ft["heads"], mlp_dim=ft["hidden_dim"]),
                nn.Linear(dm["regression"]["input_dim"], dm["regression"]["out_dim"]),
            ]
        )  # fmt: skip

    def forward(self, complete_input, incomplete_input):
        vision, audio, language = complete_input
        vision_m, audio_m, language_m = incomplete_input

        b = vision_m.size(0)

        h_1_v = self.proj_v(vision_m)[:, :8]
        h_1_a = self.proj_a(audio_m)[:, :8]
        h_1_l = self.proj_l(self.bertmodel(language_m))[:, :8]

        feat_tmp = self.completeness_check[0](h_1_l)[:, :1].squeeze()
        w = self.completeness_check[1](feat_tmp)  # completeness scores

        h_0_p = repeat(self.h_p, "1 n d -> b n d", b=b)
        h_1_p = self.proxy_dominate_modality_generator(torch.cat([h_0_p, h_1_a, h_1_v], dim=1))[:, :8]
        h_1_p = self.GRL(h_1_p)
        h_1_d = h_1_p * (1 - w.unsqueeze(-1)) + h_1_l * w.unsqueeze(-1)

        h_hyper = repeat(self.h_hyper, "1 n d -> b n d", b=b)
        h_d_list = self.dmml[0](h_1_d)
        h_hyper = self.dmml[1](h_d_list, h_1_a, h_1_v, h_hyper)
        feat = self.dmml[2](h_hyper, h_d_list[-1])
        output = self.dmml[3](torch.mean(feat[:, 1:], dim=1))

        rec_feats, complete_feats, effectiveness_discriminator_out = None, None, None
        if (vision is not None) and (audio is not None) and (language is not None):
            rec_feat_a = self.reconstructor[0](h_1_a)
            rec_feat_v = self.reconstructor[1](h_1_v)
            rec_feat_l = self.reconstructor[2](h_1_l)
            rec_feats = torch.cat([rec_feat_a, rec_feat_v, rec_feat_l], dim=1)

            complete_language_feat = self.proj_l(self.bertmodel(language))[:, :8]
            complete_vision_feat = self.proj_v(vision)[:, :8]
            complete_audio_feat = self.proj_a(audio)[:, :8]

            effective_discriminator_input = rearrange(
                torch.cat([h_1_d, complete_language_feat]), "b n d -> (b n) d"
            )
            effectiveness_discriminator_out = self.effective_discriminator(effective_discriminator_input)

            complete_feats = torch.cat(
                [complete_audio_feat, complete_vision_feat, complete_language_feat], dim=1
            )

        return {"sentiment_preds": output, "w": w, "effectiveness_discriminator_out": effectiveness_discriminator_out,
                "rec_feats": rec_feats, "complete_feats": complete_feats}  # fmt: skip


# --- core/losses.py ---------------------------------------------------------------------------------------
class MultimodalLoss(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.alpha = args["base"]["alpha"]
        self.beta = args["base"]["beta"]
        self.gamma = args["base"]["gamma"]
        self.sigma = args["base"]["sigma"]
        self.CE_Fn = nn.CrossEntropyLoss()
        self.MSE_Fn = nn.MSELoss()

    def forward(self, out, label):
        l_cc = self.MSE_Fn(out["w"], label["completeness_labels"]) if out["w"] is not None else 0
        l_adv = (
            self.CE_Fn(out["effectiveness_discriminator_out"], label["effectiveness_labels"])
            if out["effectiveness_discriminator_out"] is not None
            else 0
        )
        l_rec = (
            self.MSE_Fn(out["rec_feats"], out["complete_feats"])
            if out["rec_feats"] is not None and out["complete_feats"] is not None
            else 0
        )
        l_sp = self.MSE_Fn(out["sentiment_preds"], label["sentiment_labels"])
        loss = self.alpha * l_cc + self.beta * l_adv + self.gamma * l_rec + self.sigma * l_sp
        return {"loss": loss, "l_sp": l_sp, "l_cc": l_cc, "l_adv": l_adv, "l_rec": l_rec}


# --- core/dataset.py MMDataset.generate_m -----------------------------------------------------------------
def generate_m(modality, input_mask, input_len, missing_rate, missing_seed, mode="text"):
    if mode == "text":
        input_len = np.argmin(input_mask, axis=1)
    elif mode == "audio" or mode == "vision":
        input_mask = np.array(
            [np.array([1] * length + [0] * (modality.shape[1] - length)) for length in input_len]
        )
    np.random.seed(missing_seed)
    missing_mask = (
        np.random.uniform(size=input_mask.shape) > missing_rate.repeat(input_mask.shape[1], 1)
    ) * input_mask

    assert missing_mask.shape == input_mask.shape

    if mode == "text":
        # CLS SEG Token unchanged.
        for i, instance in enumerate(missing_mask):
            instance[0] = instance[input_len[i] - 1] = 1

        modality_m = missing_mask * modality + (100 * np.ones_like(modality)) * (
            input_mask - missing_mask
        )  # UNK token: 100.
    elif mode == "audio" or mode == "vision":
        modality_m = missing_mask.reshape(modality.shape[0], modality.shape[1], 1) * modality

    return modality_m, input_len, input_mask, missing_mask
