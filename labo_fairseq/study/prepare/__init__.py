"""Data preparation as fairseq's ``examples/translation`` recipes: one module per dataset on shared
helpers (:mod:`~labo_fairseq.study.prepare.common`); :func:`recipe` gives a dataset's."""

from typing import Callable


def recipe(name: str) -> Callable:
    """The function preparing dataset ``name`` (one of :data:`NAMES`) from an Options."""
    from labo_fairseq.study.prepare import iwslt14, iwslt17, multi30k, wmt14

    return {
        "iwslt14.de-en": lambda o: iwslt14.prepare_iwslt14("de", o),
        "iwslt14.fr-en": lambda o: iwslt14.prepare_iwslt14("fr", o),
        "iwslt17.de_fr-en": iwslt17.prepare_iwslt17,
        "wmt14.en-de": wmt14.prepare_wmt14,
        "multi30k.de-en": multi30k.prepare_multi30k,
    }[name]


NAMES = ("iwslt14.de-en", "iwslt14.fr-en", "iwslt17.de_fr-en", "wmt14.en-de", "multi30k.de-en")
