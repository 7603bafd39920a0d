"""Training targets never claim a dataset's annotation as their source (data_gen/model_voice.py)."""

from facellm.data_gen.model_voice import model_voice


def test_provenance_phrases_are_removed_but_values_stay():
    a = "Apparent age: annotated as around 16 years. Perceived gender: a woman, according to the human label."
    assert model_voice(a) == "Apparent age: around 16 years. Perceived gender: a woman."
    assert model_voice("Child (about 9 years, annotated).") == "Child (about 9 years)."
    assert model_voice("The expression reads as angry (annotated as this class).") == "The expression reads as angry."
    assert model_voice("The subject appears to be a man, as the dataset's annotators perceived.") == \
        "The subject appears to be a man."
    b = "About 30 years old, a young adult, according to the human label of perceived age."
    assert model_voice(b) == "About 30 years old, a young adult (a perceived-age estimate)."


def test_answers_about_the_annotation_are_not_trainable():
    assert model_voice("They differ: the human annotation says sad, while the expression model reads happy.") is None
    assert model_voice("Not closely: the annotated perceived age is 53 years, while the age model estimates 42.") is None
    assert model_voice("The dataset's label is happy.") is None  # an unknown wording: not trained on


def test_model_estimates_pass_unchanged():
    a = "The age model estimates about 34 years (young adult). Apparent age from a photo is an estimate."
    assert model_voice(a) == a
