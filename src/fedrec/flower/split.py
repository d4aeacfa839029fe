"""FELLRec's flexible storage over Flower: server blocks in the ServerApp.

Each SuperNode (``partition-id = c``) is client ``c``: it holds the causal LM's
embeddings, blocks ``[0, k)``, the last block and the head; the ServerApp
holds blocks ``[k, L−1)`` — one copy of their trainable parameters per client
(models are personalised, fellrec.md §5.1). One training step of client ``c``
is three message exchanges, the parts of :meth:`SplitModel.step`:

- ``train.split_head`` — the node runs ``head_forward`` on its own batch and
  replies ``h_k``, the attention mask and the position ids;
- ``train.split_tail`` (carries ``h_{L−1}``) — ``tail_backward``: the loss on
  the node's own labels; it keeps the tail gradients and replies
  ``∂loss/∂h_{L−1}`` and the loss;
- ``train.split_back`` (carries ``∂loss/∂h_k``) — ``head_backward``, then one
  optimiser step of all the node's parameters (tail and head gradients
  together, as tied embeddings need); an empty reply.

Between the tail and the head backward the server runs ``server_forward`` /
``server_backward`` and its own optimiser step (the engine's Adam; each
side keeps its moments: the node in its store, the server per client). Token
ids, labels and logits never leave a node; a node's parameters, pending
gradients and moments live in its :class:`~fedrec.flower.store.NodeStore`, so
any worker can serve any message.

A federated round is ``steps`` such steps of every client, then FELLRec's
dynamic balance (:class:`~fedrec.methods.fellrec.FELLRec`'s ``aggregate``, the
embedded engine's code) over each client's whole ``θ_i``: its node uploads the
node-side adapters (``train.split_upload``), the server joins them with the
server-side ones it holds, mixes, keeps the server side and sends each node its
mixed node side (``train.split_load``).

After the last round (``spec.evaluate``), each client's held-out loss through
the split, forward only: ``evaluate.split_head`` (``h_k`` of its held-out
batch), the server's blocks, ``evaluate.split_tail`` (the node's loss on its
own labels, back as a metric). With ``spec.gen_tokens``, each client also
decodes its held-out next title greedily, a message pair per token
(``evaluate.split_gen_head`` / ``evaluate.split_gen_tail``, the prefix
recomputed each time: the node keeps the tokens in its store, the server
nothing between messages); the node answers only the summed log-probability
and whether the title matches — the title never leaves it.

The in-process reference (:func:`train_in_process`) runs the same parts in one
process; the Flower run equals it (``tests/flower/test_split_flower.py``).

Scope: the generative (causal LM) backbone on ``SplitSpec``'s title lists —
the protocol-level reference, which also evaluates and decodes through the
split. ``fedrec run`` configs with ``backbone.split_k`` train over Flower with
:mod:`fedrec.flower.split_run` (the embedded engine's rounds).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedrec.errors import FedrecError
from fedrec.fl.stacked import StackedAdam
from fedrec.fl.strategy import RoundContext
from fedrec.flower.client import FedrecClientApp, node_queries, partition
from fedrec.flower.records import from_record, to_record
from fedrec.flower.store import NodeStore
from fedrec.methods.fellrec import FELLRec, FELLRecConfig
from fedrec.models.split import Message, SplitModel


@dataclass(frozen=True)
class SplitSpec:
    """What both sides build identically: model, split depth, data, optimiser."""

    titles: tuple[str, ...] = ()
    path: str = "tiny"  # a causal LM: "tiny", "smollm2" or a local HF dir
    k: int = 1
    lora_rank: int = 4
    lr: float = 0.01
    optimizer: str = "adam"  # or "sgd"; the engine's StackedAdam, reset each round
    steps: int = 2  # local steps of every client per round
    rounds: int = 1  # each ends with FELLRec's dynamic balance
    batch: int = 2
    seed: int = 0
    evaluate: bool = True  # each client's held-out loss after the last round
    gen_tokens: int = 0  # > 0: also decode each client's next title greedily


EVAL_STEP = -1


class SplitParty:
    """One side's model: the LM with LoRA, its split, which parameters train."""

    def __init__(self, spec: SplitSpec) -> None:
        from fedrec.models.causal_lm import load_causal_lm

        self.spec = spec
        lm, self.tok = load_causal_lm(spec.path, list(spec.titles), seed=spec.seed)
        self.model = _with_lora(lm.double(), spec)
        self.split = SplitModel(self.model, spec.k)
        server = self.split.server_parameters()
        trainable = [
            (n, p) for n, p in self.model.named_parameters() if p.requires_grad
        ]
        self.server_params = {n: p for n, p in trainable if id(p) in server}
        self.client_params = {n: p for n, p in trainable if id(p) not in server}
        self.initial = snapshot(dict(trainable))  # every copy starts here

    def batch(self, client: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client ``client``'s prompts at ``step`` (its own titles), padded right.

        Step ``EVAL_STEP`` (−1) is the client's held-out batch: training steps
        count from 0.
        """
        from fedrec.models.causal_lm import prompt

        t, n = self.spec.titles, len(self.spec.titles)
        texts = []
        for b in range(self.spec.batch):
            start = (client * 7 + (step * self.spec.batch + b) * 3) % n
            hist = [t[(start + j) % n] for j in range(3)]
            texts.append(prompt(hist, t[(start + 3) % n]))
        enc = self.tok(texts, return_tensors="pt", padding=True)
        return enc["input_ids"], enc["attention_mask"]

    def gen_prompt(self, client: int) -> tuple[torch.Tensor, str]:
        """A held-out prompt ``(1, L)`` of client ``client``, and its answer.

        The first history of the held-out batch, up to the answer's opening
        quote; the answer is the title that follows it.
        """
        from fedrec.models.causal_lm import prompt

        t, n = self.spec.titles, len(self.spec.titles)
        start = (client * 7 + EVAL_STEP * self.spec.batch * 3) % n
        hist = [t[(start + j) % n] for j in range(3)]
        ids = self.tok([prompt(hist) + '"'], return_tensors="pt")["input_ids"]
        return ids, t[(start + 3) % n]

    def gen_step(self, down: Message, ids: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Node: the tail on ``h_{L−1}``; ``ids`` plus the greedy next token.

        Also returns that token's log-probability.
        """
        with torch.no_grad():
            logp = torch.log_softmax(self.split.client_tail(down)[0, -1], -1)
        nxt = int(logp.argmax())
        return torch.cat([ids, torch.tensor([[nxt]])], 1), float(logp[nxt])

    def gen_result(self, ids: torch.Tensor, n_prompt: int, target: str) -> float:
        """1.0 when the decoded title (up to its closing quote) is ``target``."""
        text = self.tok.decode(ids[0, n_prompt:], skip_special_tokens=True)
        return float(text.split('"')[0].strip() == target)

    @staticmethod
    def loss_fn(ids: torch.Tensor, mask: torch.Tensor) -> Any:
        """Next-token cross-entropy over the unpadded tokens."""

        def loss(logits: torch.Tensor) -> torch.Tensor:
            labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            return nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1)
            )

        return loss


def optimise(
    params: dict[str, nn.Parameter],
    state: dict[str, torch.Tensor],
    lr: float | dict[str, float],
    kind: str = "adam",
) -> dict[str, torch.Tensor]:
    """One step of the engine's optimiser on every parameter with a gradient.

    :class:`~fedrec.fl.stacked.StackedAdam` (``kind``: adam or sgd; ``lr``
    one rate or one per name) on a batch of one client; the gradients are
    cleared. ``state`` holds the moments and the
    step count (``m:<name>``, ``v:<name>``, ``t``; empty at a round's start, as
    the embedded engine starts a fresh optimiser each round); the new state is
    returned for the caller to keep — a node in its store, the server per
    client. Adam is elementwise, so a client's two sides stepping apart equal
    one optimiser over both.
    """
    live = {n: p for n, p in params.items() if p.grad is not None}
    with torch.no_grad():
        views = {n: p.data.unsqueeze(0) for n, p in live.items()}  # write through
        opt = StackedAdam(views, lr, kind)
        if state:
            opt.m = {n: state[f"m:{n}"].unsqueeze(0).clone() for n in live}
            opt.v = {n: state[f"v:{n}"].unsqueeze(0).clone() for n in live}
            opt.t = state["t"].clone()
        grads = {n: p.grad.unsqueeze(0) for n, p in live.items()}  # type: ignore[union-attr]
        opt.step(views, grads, torch.ones(1, dtype=torch.bool))
    for p in live.values():
        p.grad = None
    if kind == "sgd":
        return {}
    return {
        **{f"m:{n}": opt.m[n][0] for n in live},
        **{f"v:{n}": opt.v[n][0] for n in live},
        "t": opt.t,
    }


def _opt_state(saved: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in saved.items() if k.startswith(("m:", "v:")) or k == "t"}


def load(params: dict[str, nn.Parameter], values: dict[str, torch.Tensor]) -> None:
    """Copy ``values`` into ``params`` (a client's or the server's copy)."""
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(values[n])


def snapshot(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """Detached copies of ``params``."""
    return {n: p.detach().clone() for n, p in params.items()}


def balance(
    thetas: list[dict[str, torch.Tensor]], losses: list[float], rnd: int
) -> list[dict[str, torch.Tensor]]:
    """FELLRec's dynamic balance of the clients' whole ``θ_i`` after round ``rnd``.

    ``thetas[i]``: client ``i``'s trainable tensors (node and server side),
    ``losses[i]``: its mean training loss of the round. The embedded engine's
    :meth:`FELLRec.aggregate` with its default options, every client uploading.
    """
    n = len(thetas)
    stacked = {k: torch.stack([t[k] for t in thetas]) for k in thetas[0]}
    ctx = RoundContext(
        round=rnd,
        clients=torch.arange(n),
        weights=torch.ones(n, dtype=torch.float64),
        groups={},
        n_groups={},
        losses=torch.tensor(losses, dtype=torch.float64),
    )
    mixed = FELLRec(FELLRecConfig()).aggregate(stacked, stacked, None, ctx)  # type: ignore[arg-type]
    return [{k: v[i] for k, v in mixed.items()} for i in range(n)]


def train_in_process(spec: SplitSpec, n_clients: int) -> dict[str, Any]:
    """The reference: every client's steps and rounds through the split, one process.

    Returns the losses (``[round · steps + step][client]``), each client's
    server-side parameters at the end and (``spec.evaluate``) each client's
    held-out loss under its final model (``eval_losses``), and
    (``spec.gen_tokens``) its greedy decoding: ``generated[c]`` holds the
    tokens, their summed log-probability and the hit.
    """
    party = SplitParty(spec)
    both = {**party.client_params, **party.server_params}
    clients = [dict(party.initial) for _ in range(n_clients)]
    losses: list[list[float]] = []
    for rnd in range(spec.rounds):
        opt: list[dict[str, torch.Tensor]] = [{} for _ in range(n_clients)]
        for step in range(rnd * spec.steps, (rnd + 1) * spec.steps):
            row = []
            for c in range(n_clients):
                load(both, clients[c])
                ids, mask = party.batch(c, step)
                loss, _ = party.split.step(ids, mask, party.loss_fn(ids, mask))
                opt[c] = optimise(both, opt[c], spec.lr, spec.optimizer)
                clients[c] = snapshot(both)
                row.append(float(loss))
            losses.append(row)
        clients = balance(clients, _round_means(losses, spec), rnd)
    server = [{n: c[n] for n in party.server_params} for c in clients]
    held_out = []
    for c in range(n_clients) if spec.evaluate else ():
        load(both, clients[c])
        ids, mask = party.batch(c, EVAL_STEP)
        held_out.append(float(party.loss_fn(ids, mask)(party.split.forward(ids, mask))))
    gen = []
    for c in range(n_clients) if spec.gen_tokens else ():
        load(both, clients[c])
        ids, target = party.gen_prompt(c)
        out, logp = ids, 0.0
        for _ in range(spec.gen_tokens):  # the same parts as over Flower
            up = party.split.head_forward(out, torch.ones_like(out))
            with torch.no_grad():
                down = party.split.server(up)
            out, lp = party.gen_step(down, out)
            logp += lp
        hit = party.gen_result(out, ids.shape[1], target)
        tokens = out[0, ids.shape[1] :].tolist()
        gen.append({"tokens": tokens, "logp": logp, "hit": hit})
    return {
        "losses": losses,
        "server": server,
        "eval_losses": held_out,
        "generated": gen,
    }


def _round_means(losses: list[list[float]], spec: SplitSpec) -> list[float]:
    """Each client's mean loss over the last round's steps."""
    return torch.tensor(losses[-spec.steps :]).mean(0).tolist()


@functools.cache
def party_for(spec: SplitSpec) -> SplitParty:
    """One party per process and spec (building the model is the slow part)."""
    return SplitParty(spec)


class SplitClientApp(FedrecClientApp):
    """A node's side of the split; pickles as (its factory, its spec)."""

    def __init__(self, spec: SplitSpec) -> None:
        super().__init__(None, mods=[])
        self.spec = spec

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return split_client_app, (self.spec,)


@functools.cache
def split_client_app(spec: SplitSpec) -> SplitClientApp:
    """The ClientApp of a split run (one per process and spec)."""
    return _build_client(spec)


def _build_client(spec: SplitSpec) -> SplitClientApp:
    from flwr.app import Context, MetricRecord, RecordDict
    from flwr.app import Message as FlwrMessage

    app = SplitClientApp(spec)

    def state(
        context: Context,
    ) -> tuple[SplitParty, NodeStore, int, dict[str, torch.Tensor]]:
        """The party, its parameters and pending gradients loaded from the store.

        Also returns the store, the node's client and its optimiser state.
        """
        party, client = party_for(spec), partition(context)[0]
        store = NodeStore.of(context, client)
        saved = store.load() or party.initial  # nothing saved yet: the model
        load(party.client_params, saved)
        for n, p in party.client_params.items():  # tail gradients, until the head's
            g = saved.get(f"grad:{n}")
            p.grad = None if g is None else g.clone()
        return party, store, client, _opt_state(saved)

    def reply(msg: FlwrMessage, tensors: dict[str, torch.Tensor], **metrics: float):
        content = RecordDict({"wire": to_record(tensors)})
        if metrics:
            content["metrics"] = MetricRecord(metrics)
        return FlwrMessage(content=content, reply_to=msg)

    @app.train("split_head")
    def head(msg: FlwrMessage, context: Context) -> FlwrMessage:
        party, _, client, _ = state(context)
        ids, mask = party.batch(client, int(msg.content["config"]["step"]))
        up = party.split.head_forward(ids, mask)
        return reply(msg, _as_dict(up))

    @app.train("split_tail")
    def tail(msg: FlwrMessage, context: Context) -> FlwrMessage:
        party, store, client, opt = state(context)
        ids, mask = party.batch(client, int(msg.content["config"]["step"]))
        down = _as_message(from_record(msg.content["wire"]))
        loss, grad = party.split.tail_backward(down, party.loss_fn(ids, mask))
        grads = {
            f"grad:{n}": p.grad
            for n, p in party.client_params.items()
            if p.grad is not None
        }
        store.save({**snapshot(party.client_params), **grads, **opt})
        return reply(msg, {"tensor": grad.tensor}, loss=float(loss))

    @app.train("split_back")
    def back(msg: FlwrMessage, context: Context) -> FlwrMessage:
        party, store, client, opt = state(context)
        ids, mask = party.batch(client, int(msg.content["config"]["step"]))
        grad = Message(from_record(msg.content["wire"])["tensor"])
        party.split.head_backward(ids, mask, grad)
        opt = optimise(party.client_params, opt, spec.lr, spec.optimizer)  # tail + head
        store.save({**snapshot(party.client_params), **opt})
        return reply(msg, {})

    @app.train("split_upload")
    def upload(msg: FlwrMessage, context: Context) -> FlwrMessage:
        party, _, _, _ = state(context)
        return reply(msg, snapshot(party.client_params))

    @app.train("split_load")
    def load_mixed(msg: FlwrMessage, context: Context) -> FlwrMessage:
        party, store, _, _ = state(context)
        mixed = from_record(msg.content["wire"])
        if set(mixed) != set(party.client_params):
            raise FedrecError(
                f"split_load: expected {sorted(party.client_params)}, "
                f"got {sorted(mixed)}"
            )
        store.save(mixed)  # and no optimiser state: the next round starts afresh
        return reply(msg, {})

    @app.evaluate("split_head")
    def eval_head(msg: FlwrMessage, context: Context) -> FlwrMessage:
        party, _, client, _ = state(context)
        ids, mask = party.batch(client, EVAL_STEP)
        return reply(msg, _as_dict(party.split.head_forward(ids, mask)))

    @app.evaluate("split_tail")
    def eval_tail(msg: FlwrMessage, context: Context) -> FlwrMessage:
        party, _, client, _ = state(context)
        ids, mask = party.batch(client, EVAL_STEP)
        with torch.no_grad():
            down = _as_message(from_record(msg.content["wire"]))
            loss = party.loss_fn(ids, mask)(party.split.client_tail(down))
        return reply(msg, {}, loss=float(loss))

    def generated(store: NodeStore, client: int, step: int):
        """(prompt ids, target, tokens so far, their log-probability)."""
        saved = store.load() or {}
        ids, target = party_for(spec).gen_prompt(client)
        if step == 0:
            return ids, target, ids, 0.0
        return ids, target, saved["gen:ids"], float(saved["gen:logp"])

    @app.evaluate("split_gen_head")
    def gen_head(msg: FlwrMessage, context: Context) -> FlwrMessage:
        party, store, client, _ = state(context)
        step = int(msg.content["config"]["step"])
        out = generated(store, client, step)[2]
        return reply(msg, _as_dict(party.split.head_forward(out, torch.ones_like(out))))

    @app.evaluate("split_gen_tail")
    def gen_tail(msg: FlwrMessage, context: Context) -> FlwrMessage:
        party, store, client, _ = state(context)
        step = int(msg.content["config"]["step"])
        ids, target, out, logp = generated(store, client, step)
        out, lp = party.gen_step(_as_message(from_record(msg.content["wire"])), out)
        saved = store.load() or party.initial
        total = torch.tensor(logp + lp, dtype=torch.float64)
        store.save({**saved, "gen:ids": out, "gen:logp": total})
        if step < spec.gen_tokens - 1:
            return reply(msg, {})
        hit = party.gen_result(out, ids.shape[1], target)
        return reply(msg, {}, logp=float(total), hit=hit)  # the title stays here

    node_queries(app)
    return app


def split_server_app(spec: SplitSpec, nodes: int, result: dict[str, Any]) -> Any:
    """The ServerApp: drives every client's steps, runs the middle blocks.

    ``result`` receives ``losses`` (``[round · steps + step][client]``), each
    client's held-out loss after the last round (``eval_losses``), each
    client's server-side parameters (``server``), the names of the node-side
    ones (``client_params``), what the server received (``received``: tensor
    names per message type) and the bytes on the wire.
    """
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.app import Message as FlwrMessage
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedrec.flower.server import _discover, _finish

        opts = {"node-timeout": 300.0, "round-timeout": 600.0}
        host = _discover(grid, nodes, opts)
        party = party_for(spec)
        mine = [{n: party.initial[n] for n in party.server_params} for _ in host]
        received: dict[str, set[str]] = {}
        wire, losses = 0, []

        def ask(c: int, kind: str, step: int, tensors: dict[str, torch.Tensor]):
            nonlocal wire
            content = RecordDict(
                {"wire": to_record(tensors), "config": ConfigRecord({"step": step})}
            )
            out = FlwrMessage(content, host[c], kind)
            (rep,) = grid.send_and_receive([out], timeout=opts["round-timeout"])
            if rep.has_error():
                raise RuntimeError(f"client {c} {kind}: {rep.error.reason}")
            got = from_record(rep.content["wire"])
            received.setdefault(kind, set()).update(got)
            wire += sum(t.numel() * t.element_size() for t in tensors.values())
            wire += sum(t.numel() * t.element_size() for t in got.values())
            return got, rep.content.metric_records.get("metrics", {})

        t0, clients = time.perf_counter(), sorted(host)
        for rnd in range(spec.rounds):
            opt: dict[int, dict[str, torch.Tensor]] = {c: {} for c in clients}
            for step in range(rnd * spec.steps, (rnd + 1) * spec.steps):
                row = []
                for c in clients:
                    load(party.server_params, mine[c])
                    up, _ = ask(c, "train.split_head", step, {})
                    leaf, mid = party.split.server_forward(_as_message(up))
                    down = _as_dict(mid, detach=True)
                    g_down, m = ask(c, "train.split_tail", step, down)
                    g_up = party.split.server_backward(leaf, mid, _as_message(g_down))
                    opt[c] = optimise(
                        party.server_params, opt[c], spec.lr, spec.optimizer
                    )
                    mine[c] = snapshot(party.server_params)
                    ask(c, "train.split_back", step, {"tensor": g_up.tensor})
                    row.append(float(m["loss"]))
                losses.append(row)
            ups = [ask(c, "train.split_upload", -1, {})[0] for c in clients]
            thetas = [{**u, **mine[c]} for c, u in zip(clients, ups, strict=True)]
            mixed = balance(thetas, _round_means(losses, spec), rnd)
            for c, theta in zip(clients, mixed, strict=True):
                mine[c] = {n: theta[n] for n in party.server_params}
                back = {n: theta[n] for n in party.client_params}
                ask(c, "train.split_load", -1, back)
        held_out = []
        for c in clients if spec.evaluate else ():
            load(party.server_params, mine[c])
            up, _ = ask(c, "evaluate.split_head", -1, {})
            with torch.no_grad():
                mid = party.split.server(_as_message(up))
            _, m = ask(c, "evaluate.split_tail", -1, _as_dict(mid))
            held_out.append(float(m["loss"]))
        generated = []
        for c in clients if spec.gen_tokens else ():
            load(party.server_params, mine[c])
            for t in range(spec.gen_tokens):  # the node keeps the tokens
                up, _ = ask(c, "evaluate.split_gen_head", t, {})
                with torch.no_grad():
                    mid = party.split.server(_as_message(up))
                _, m = ask(c, "evaluate.split_gen_tail", t, _as_dict(mid))
            generated.append({"logp": float(m["logp"]), "hit": float(m["hit"])})
        _finish(grid, host, opts)
        result.update(
            losses=losses,
            eval_losses=held_out,
            generated=generated,
            server=mine,
            client_params=sorted(party.client_params),
            received={k: sorted(v) for k, v in received.items()},
            wire_bytes=wire,
            train_s=time.perf_counter() - t0,
        )

    return app


def run_split_simulation(spec: SplitSpec, n_clients: int) -> dict[str, Any]:
    """Split training on ``n_clients`` simulated SuperNodes (one client each)."""
    import os

    from flwr.simulation import run_simulation

    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    result: dict[str, Any] = {}
    run_simulation(
        server_app=split_server_app(spec, n_clients, result),
        client_app=split_client_app(spec),
        num_supernodes=n_clients,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    return result


def _with_lora(lm: nn.Module, spec: SplitSpec) -> nn.Module:
    """LoRA on the attention projections; only LoRA trains."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(spec.seed + 1)
    cfg = LoraConfig(
        r=spec.lora_rank,
        lora_alpha=2 * spec.lora_rank,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
    )
    model = get_peft_model(lm, cfg).eval()
    with torch.no_grad():  # B ≠ 0, so the adapters change the function at once
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model


def _as_dict(msg: Message, detach: bool = False) -> dict[str, torch.Tensor]:
    out = {"tensor": msg.tensor.detach() if detach else msg.tensor}
    if msg.attention_mask is not None:
        out["attention_mask"] = msg.attention_mask
    if msg.position_ids is not None:
        out["position_ids"] = msg.position_ids
    return out


def _as_message(d: dict[str, torch.Tensor]) -> Message:
    return Message(d["tensor"], d.get("attention_mask"), d.get("position_ids"))
