"""A trie of the valid SIDs, as CSR child tables, for constrained decoding.

Nodes are numbered breadth first: the root is node 0, the nodes reached after ``d``
tokens are the contiguous range ``depth_start[d] .. depth_start[d+1]-1``, and the
children of every node are contiguous and sorted by token, so

- ``ptr`` (n_nodes + 1,): children of node ``p`` are nodes ``ptr[p] .. ptr[p+1]-1``,
- ``token`` (n_nodes,): the token that leads to each node (-1 for the root),
- ``parent`` (n_nodes,): its parent (-1 for the root),
- ``item_of_node`` (n_nodes,): the item whose SID ends at the node, -1 elsewhere.

Every terminal node (an item's last token, ``END`` for a short variable-length SID) has
no children, and every childless node is terminal.  All queries take a batch of node
ids and are vectorised (numpy here; torch tables for beam search via
:meth:`SIDTrie.level_table`).
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError

PAD = 0


class SIDTrie:
    """Trie of ``item_tokens`` (N, W) with ``n_tokens`` (N,) non-pad tokens per item.

    ``vocab_size`` bounds the tokens.  Two items with the same token SID raise a
    DataError naming them.
    """

    def __init__(self, item_tokens, n_tokens, vocab_size: int):
        tok = np.asarray(item_tokens, dtype=np.int64)
        ntok = np.asarray(n_tokens, dtype=np.int64)
        if tok.ndim != 2 or ntok.shape != (tok.shape[0],):
            raise DataError(f"item_tokens must be (N, W) and n_tokens (N,), got {tok.shape} and {ntok.shape}",
                            "build the trie from SIDTokens (SIDTokens.trie), which lays the tokens out")
        N, W = tok.shape
        if N == 0:
            raise DataError("the trie needs at least one SID", "build it from non-empty codes")
        if ntok.min() < 1 or ntok.max() > W:
            raise DataError(f"n_tokens must lie in 1..{W}",
                            "give each item's number of SID tokens, between 1 and the number of levels")
        live = np.arange(W)[None, :] < ntok[:, None]
        if ((tok < 0) | (tok >= vocab_size))[live].any() or (tok[live] == PAD).any():
            raise DataError(f"SID tokens must lie in 1..{vocab_size - 1} (0 is padding)",
                            "build the trie from SIDTokens, which offsets each level's codes into the vocabulary")
        V = int(vocab_size)
        node = np.zeros(N, np.int64)
        starts = [0, 1]
        parents, tokens = [np.array([-1])], [np.array([-1])]
        for d in range(W):
            act = ntok > d
            key = node[act] * V + tok[act, d]
            uk, inv = np.unique(key, return_inverse=True)
            node[act] = starts[-1] + inv.ravel()
            parents.append(uk // V)
            tokens.append(uk % V)
            starts.append(starts[-1] + len(uk))
        self.vocab_size = V
        self.width = W
        self.depth_start = np.asarray(starts, np.int64)
        self.parent = np.concatenate(parents).astype(np.int64)
        self.token = np.concatenate(tokens).astype(np.int64)
        self.n_nodes = int(self.depth_start[-1])
        # children of p: nodes with parent p, contiguous since parent[1:] is non-decreasing
        self.ptr = (1 + np.searchsorted(self.parent[1:], np.arange(self.n_nodes + 1), side="left")).astype(np.int64)
        self._keys = self.parent[1:] * V + self.token[1:]           # sorted: search a (node, token) edge
        item_of_node = np.full(self.n_nodes, -1, np.int64)
        counts = np.bincount(node, minlength=self.n_nodes)
        if (counts > 1).any():
            nd = int(np.flatnonzero(counts > 1)[0])
            items = np.flatnonzero(node == nd)
            raise DataError(f"SID tokens {tok[items[0]].tolist()} are shared by items {items[:5].tolist()}",
                            "use codes without collisions (a disambiguation level)")
        item_of_node[node] = np.arange(N)
        self.item_of_node = item_of_node
        n_children = np.diff(self.ptr)
        if ((n_children == 0) != (item_of_node >= 0)).any():
            raise DataError("an item's SID is a prefix of another item's SID",
                            "end short (variable-length) SIDs with the END token (SIDTokens does)")
        self.n_children = n_children
        self._torch: dict = {}
        self._leaves: np.ndarray | None = None
        self._item_node: np.ndarray | None = None

    # ------------------------------------------------------------------ queries
    @property
    def n_items(self) -> int:
        return int((self.item_of_node >= 0).sum())

    def depth_of(self, nodes) -> np.ndarray:
        return np.searchsorted(self.depth_start, np.asarray(nodes, np.int64), side="right") - 1

    def children(self, nodes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Index arrays ``(rows, tokens, child_nodes)`` of every allowed next token of
        each node of ``nodes`` (M,): ``rows`` indexes ``nodes``."""
        n = np.asarray(nodes, np.int64)
        lo, cnt = self.ptr[n], self.n_children[n]
        rows = np.repeat(np.arange(n.size), cnt)
        child = np.repeat(lo, cnt) + (np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        return rows, self.token[child], child

    def allowed_mask(self, nodes) -> np.ndarray:
        """(M, V) bool: the tokens allowed after each node."""
        n = np.asarray(nodes, np.int64)
        rows, toks, _ = self.children(n)
        mask = np.zeros((n.size, self.vocab_size), bool)
        mask[rows, toks] = True
        return mask

    def next_node(self, nodes, tokens) -> np.ndarray:
        """Child of each node by each token; -1 where the token is not allowed (or node < 0)."""
        n = np.asarray(nodes, np.int64)
        t = np.asarray(tokens, np.int64)
        q = n * self.vocab_size + t
        pos = np.searchsorted(self._keys, q)
        pos_c = np.minimum(pos, len(self._keys) - 1)
        ok = (n >= 0) & (t >= 0) & (t < self.vocab_size) & (self._keys[pos_c] == q) if len(self._keys) \
            else np.zeros(q.shape, bool)
        return np.where(ok, pos_c + 1, -1)

    def walk(self, sid_tokens) -> np.ndarray:
        """Node reached by each (M, W') token row (``PAD`` after a terminal node is
        ignored); -1 where a token leaves the trie."""
        t = np.atleast_2d(np.asarray(sid_tokens, np.int64))
        node = np.zeros(t.shape[0], np.int64)
        for d in range(t.shape[1]):
            term = (node >= 0) & (self.item_of_node[np.maximum(node, 0)] >= 0)
            step = self.next_node(node, t[:, d])
            node = np.where(term, np.where(t[:, d] == PAD, node, -1), step)
        return node

    def items_of(self, sid_tokens) -> np.ndarray:
        """(M,) item of each (M, W') SID token row; -1 when it is not a whole valid SID."""
        node = self.walk(sid_tokens)
        return np.where(node >= 0, self.item_of_node[np.maximum(node, 0)], -1)

    def sids(self) -> np.ndarray:
        """(N, W) token SID of every item, row = item (rebuilt from the trie)."""
        out = np.zeros((self.n_items, self.width), np.int64)
        term = np.flatnonzero(self.item_of_node >= 0)
        node = term.copy()
        depth = self.depth_of(node)
        items = self.item_of_node[term]
        for _ in range(self.width):
            live = node > 0
            out[items[live], depth[live] - 1] = self.token[node[live]]
            node = np.where(live, self.parent[np.maximum(node, 0)], 0)
            depth = depth - 1
        return out

    def leaf_counts(self) -> np.ndarray:
        """(n_nodes,) number of items whose SID passes through each node (1 at a terminal)."""
        if self._leaves is None:
            c = (self.item_of_node >= 0).astype(np.int64)
            for d in range(len(self.depth_start) - 2, 0, -1):       # deepest level first
                lo, hi = int(self.depth_start[d]), int(self.depth_start[d + 1])
                c += np.bincount(self.parent[lo:hi], weights=c[lo:hi], minlength=self.n_nodes).astype(np.int64)
            self._leaves = c
        return self._leaves

    def item_nodes(self) -> np.ndarray:
        """(N,) terminal node of each item."""
        if self._item_node is None:
            term = np.flatnonzero(self.item_of_node >= 0)
            out = np.empty(term.size, np.int64)
            out[self.item_of_node[term]] = term
            self._item_node = out
        return self._item_node

    def exhausted_keys(self, rows, items) -> np.ndarray:
        """Sorted keys ``row * n_nodes + node`` of the nodes *every* item below which is
        excluded for that row, from the excluded ``(rows[i], items[i])`` pairs (unique
        pairs; ``rows`` e.g. users of a batch).  Beam search drops these nodes, so no beam
        is spent on a prefix that leads only to excluded items.  The root is never listed."""
        r = np.asarray(rows, np.int64).ravel()
        node = self.item_nodes()[np.asarray(items, np.int64).ravel()]
        keys = []
        for _ in range(self.width):
            live = node > 0
            if not live.any():
                break
            r, node = r[live], node[live]
            keys.append(r * self.n_nodes + node)
            node = self.parent[node]
        if not keys:
            return np.zeros(0, np.int64)
        uk, cnt = np.unique(np.concatenate(keys), return_counts=True)
        return uk[cnt == self.leaf_counts()[uk % self.n_nodes]]

    # ------------------------------------------------------------------ torch tables
    def level_table(self, depth: int, device):
        """Padded child table of the nodes at ``depth`` as torch tensors on ``device``:
        ``(tokens, nodes)``, each (n_nodes_at_depth, C) long, -1 padded, C the largest
        number of children at that depth (at least 1); row = node - depth_start[depth]."""
        import torch

        key = ("level", depth, str(device))
        if key not in self._torch:
            lo, hi = int(self.depth_start[depth]), int(self.depth_start[depth + 1])
            cnt = self.n_children[lo:hi]
            C = max(int(cnt.max(initial=0)), 1)
            rows, toks, child = self.children(np.arange(lo, hi))
            col = np.arange(rows.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            T = np.full((hi - lo, C), -1, np.int64)
            Nn = np.full((hi - lo, C), -1, np.int64)
            T[rows, col] = toks
            Nn[rows, col] = child
            self._torch[key] = (torch.as_tensor(T, device=device), torch.as_tensor(Nn, device=device))
        return self._torch[key]

    def node_items(self, device):
        """``item_of_node`` as a torch long tensor on ``device``."""
        import torch

        key = ("items", str(device))
        if key not in self._torch:
            self._torch[key] = torch.as_tensor(self.item_of_node, device=device)
        return self._torch[key]

    def __repr__(self) -> str:
        return f"SIDTrie(n_items={self.n_items}, n_nodes={self.n_nodes}, width={self.width})"
