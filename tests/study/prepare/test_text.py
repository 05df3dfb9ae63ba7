"""labo_fairseq.study.prepare.text: each function against the behaviour of the fairseq/Moses step it replaces."""

from labo_fairseq.study.prepare import text as T


def test_xml_segments_like_grep_sed():
    lines = [
        '<doc docid="1">',
        '<seg id="1"> Hello  world. </seg>',
        '<seg id="22">It\u2019s   here</seg>  ',
        "<talkid>5</talkid>",
        '  <seg id="3">\u00a0keep nbsp</seg>',
    ]
    # sed's \s is ASCII whitespace: the no-break space stays; the curly apostrophe becomes '.
    assert list(T.xml_segments(lines)) == ["Hello  world.", "It's   here", "  \u00a0keep nbsp"]


def test_train_tags_filtering():
    lines = ["<url>http://x</url>", "<talkid>1</talkid>", "<keywords>a</keywords>", "<title>T</title>",
             "<description>D</description>", " plain line ", "<speaker>S</speaker>"]
    assert list(T.train_tags_lines(lines)) == ["T", "D", " plain line ", "<speaker>S</speaker>"]
    assert list(T.train_tags_lines(lines, T.IWSLT17_TRAIN_DROP, strip=True)) == ["T", "D", "plain line"]


def test_clean_corpus_rules():
    pairs = [
        ("a b c", "x y z"),          # kept
        ("a  b\tc ", " x y z"),      # whitespace collapsed, kept
        ("a", ""),                   # empty side dropped
        ("a b c d", "x"),            # ratio 4 > 1.5 dropped
        ("a b c", "x y"),            # ratio 1.5 kept (not > 1.5)
        (" ".join("w" * 6), "x y z w v u"),  # 6 words each: over max 5, dropped
        ("p|q r", "s t"),            # pipes removed
        ("w" * 12, "x"),             # word longer than max_word_length 10 dropped
    ]
    out = list(T.clean_corpus(pairs, 1, 5, 1.5, max_word_length=10))
    assert out == [("a b c", "x y z"), ("a b c", "x y z"), ("a b c", "x y"), ("pq r", "s t")]


def test_clean_corpus_factored_keeps_pipes():
    out = list(T.clean_corpus([("a|N b|V", "x|N y|V")], 1, 5, 1.5))
    assert out == [("a|N b|V", "x|N y|V")]


def test_every_nth_is_awk_nr():
    picked, rest = T.every_nth([str(i) for i in range(1, 50)], 23)
    assert picked == ["23", "46"]
    assert len(rest) == 47 and "23" not in rest


def test_moses_tokenizer_splits_final_period_of_last_word():
    tok = T.MosesTokenizer("en")
    assert tok("all the roads in the U.S.") == "all the roads in the U.S ."
    assert tok("He said \"no\" & left...") == "He said &quot; no &quot; &amp; left ..."
    assert tok("Mr. Smith is here.") == "Mr. Smith is here ."
    assert T.MosesTokenizer("en", aggressive_dash_splits=True)("a well-known fact") == "a well @-@ known fact"


def test_remove_non_printing_chars_replaces_with_space():
    assert T.remove_non_printing_chars("a\u200bb\tc\x07d") == "a b c d"
