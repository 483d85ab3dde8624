"""The lexical block: tf-idf over the static encoder's word pieces, fitted in training and
computed by serving the same way (scikit-learn's numbers, numpy only at serving)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coe_router.errors import ConfigError
from coe_router.routing.artifact import RouterArtifact
from coe_router.routing.category import CategoryRouter
from coe_router.routing.encoder import STATIC_ENCODER, describe_encoder
from coe_router.routing.lexical import LexicalBlock, LexicalEncoder, gram_keys
from coe_router.routing.static_encoder import StaticEncoder
from router_training.data import Example
from router_training.fit import FitConfig, fit
from router_training.lexical import fit_lexical, pieces_of
from tests.unit.test_routing_support import FakeEncoder, catalog, user

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
V = 50

windows_st = st.lists(
    st.lists(st.integers(0, V - 1), max_size=12).map(lambda v: np.array(v, dtype=np.int64)),
    min_size=1,
    max_size=2,
)


@pytest.fixture(scope="module")
def static() -> StaticEncoder:
    return StaticEncoder(ROOT / STATIC_ENCODER)


def test_bigrams_stay_inside_their_window() -> None:
    keys = gram_keys([np.array([1, 2]), np.array([3])], V)
    assert sorted(keys.tolist()) == [1, 2, 3, V + 1 * V + 2]  # no (2, 3) across windows


def test_rows_match_scikit_learn_tfidf() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    rng = np.random.default_rng(0)
    docs = [[rng.integers(0, 20, rng.integers(1, 15)).astype(np.int64)] for _ in range(80)]
    ours = fit_lexical(docs, V, min_df=2, max_features=10_000)
    # The same grams as strings, counted by scikit-learn.
    as_text = [" ".join(f"g{k}" for k in gram_keys(w, V)) for w in docs]
    sk = TfidfVectorizer(sublinear_tf=True, min_df=2, token_pattern=r"\S+", lowercase=False)
    theirs = sk.fit_transform(as_text)
    names = sk.get_feature_names_out()
    assert sorted(int(n[1:]) for n in names) == ours.keys.tolist()
    order = np.argsort([int(n[1:]) for n in names])
    assert np.allclose(ours.matrix.toarray(), theirs.toarray()[:, order], atol=1e-5)


def test_max_features_keeps_the_most_frequent_grams() -> None:
    docs = [[np.array([1, 2], np.int64)]] * 5 + [[np.array([3, 4], np.int64)]] * 2
    lex = fit_lexical(docs, V, min_df=2, max_features=2)
    assert lex.keys.tolist() == [1, 2]  # the 5-document grams beat the 2-document ones


@settings(max_examples=200, deadline=None)
@given(windows=windows_st, vocab=st.sets(st.integers(0, V * V + V), max_size=40))
def test_vector_is_unit_norm_over_known_grams_only(
    windows: list[np.ndarray], vocab: set[int]
) -> None:
    """Invariant: the row holds only in-vocabulary grams, each column once, and has l2
    norm 1 (0 when no gram is known), so text outside the vocabulary adds nothing."""
    keys = np.array(sorted(vocab), dtype=np.int64)
    block = LexicalBlock(
        keys, np.ones(len(keys), np.float32), np.ones((3, len(keys)), np.float32), V
    )
    cols, values = block.vector(windows)
    known = set(gram_keys(windows, V).tolist()) & vocab
    assert sorted(keys[cols].tolist()) == sorted(known)
    assert len(set(cols.tolist())) == len(cols)
    norm = float(np.linalg.norm(values))
    assert norm == pytest.approx(1.0 if known else 0.0, abs=1e-5)


def test_a_malformed_block_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="sorted"):
        LexicalBlock(np.array([3, 1]), np.ones(2, np.float32), np.ones((2, 2), np.float32), V)
    with pytest.raises(ConfigError, match="disagree"):
        LexicalBlock(np.array([1, 3]), np.ones(3, np.float32), np.ones((2, 2), np.float32), V)


def test_the_encoder_hands_over_the_pieces_it_embedded(static: StaticEncoder) -> None:
    texts = ["write a story about a nurse", "x" * 10 + " tail words " * 400]
    rows, pieces = static.encode_with_pieces(texts)
    assert np.array_equal(rows, static.encode(texts))
    assert len(pieces[0]) == 1
    assert len(pieces[1]) == 2
    assert all(ids.dtype == np.int64 and (ids < static.vocab_size).all() for ids in pieces[1])


def _rows() -> list[Example]:
    # "story" alone marks writing; the rest of each prompt is shared filler, so the
    # averaged embedding carries little signal and the lexical block has to.
    filler = ["about the old harbour town", "for my cousin and her dog", "on a rainy monday"]
    rows = []
    for i in range(60):
        f = filler[i % 3]
        rows.append(Example(f"a short story {f} number {i}", "writing", source="s"))
        rows.append(Example(f"a python script {f} number {i}", "code", source="s"))
    return rows


def _lexical_artifact(static: StaticEncoder, c: float = 2.0) -> tuple[RouterArtifact, int]:
    """A router with a lexical block fitted on :func:`_rows`, and its vocabulary size."""
    encoder, info = describe_encoder(STATIC_ENCODER)
    rows = _rows()
    texts = [r.prompt for r in rows]
    lex = fit_lexical(pieces_of(static, texts), static.vocab_size)
    config = FitConfig(C=c, fit_skills=False)
    return fit(rows, encoder.encode(texts), info, config, lexical=lex), len(lex.keys)


async def test_an_artifact_with_a_lexical_block_round_trips_and_serves(
    tmp_path: Path, static: StaticEncoder
) -> None:
    art, n_features = _lexical_artifact(static)
    assert art.lexical is not None
    art.save(tmp_path / "r")
    back = RouterArtifact.load(tmp_path / "r")
    assert back.lexical is not None
    assert back.manifest["lexical"]["features"] == n_features
    features = back.feature_encoder(static)
    assert isinstance(features, LexicalEncoder)
    assert features.dim == static.dim + 2
    probe = ["a short story for my niece", "a python script to rename files"]
    got = back.category_proba(features.encode(probe))
    assert np.allclose(
        got, art.category_proba(art.feature_encoder(static).encode(probe)), atol=0.02
    )
    assert [back.labels[i] for i in got.argmax(1)] == ["writing", "code"]
    # Embedding rows alone would silently drop the block: refused instead.
    with pytest.raises(ConfigError, match="lexical block"):
        back.category_proba(static.encode(probe))
    router = CategoryRouter(catalog(), {"artifact": str(tmp_path / "r"), "threshold": 0.0})
    assert (await router.route(user("a short story about a lighthouse"))).category == "writing"


def test_a_lexical_artifact_needs_an_encoder_with_pieces(
    tmp_path: Path, static: StaticEncoder
) -> None:
    art, _ = _lexical_artifact(static)
    with pytest.raises(ConfigError, match="word pieces"):
        art.feature_encoder(FakeEncoder())


def test_a_lexical_block_from_another_build_is_refused(
    tmp_path: Path, static: StaticEncoder
) -> None:
    _lexical_artifact(static)[0].save(tmp_path / "a")
    _lexical_artifact(static, c=0.1)[0].save(tmp_path / "b")  # another build: other weights
    (tmp_path / "a" / "lexical.npz").write_bytes((tmp_path / "b" / "lexical.npz").read_bytes())
    with pytest.raises(ConfigError, match="sha256"):
        RouterArtifact.load(tmp_path / "a")
    (tmp_path / "a" / "lexical.npz").unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        RouterArtifact.load(tmp_path / "a")
