"""How people ask: question phrasings per agent intent, and the small noise real typing adds.

Templates use ``{who}`` (the face asked about: "the person", "the woman on the right", "the second face from
the left"), ``{n}`` (a number word), ``{name}`` (an enrolled name) and ``{thing}`` (something no tool
measures). Every intent has plain, indirect, yes/no and casual forms. The held-out agent questions of
``eval/agent_heldout`` are written separately and must not be copied here.
"""

from __future__ import annotations

import random

# one face, or the face already singled out by ``{who}``
PHRASES: dict[str, list[str]] = {
    "count": [
        "How many faces are in this photo?", "How many people are in the picture?", "Count the faces, please.",
        "How many folks are in this shot?", "how many ppl are there", "Number of faces in the image?",
        "Can you tell me how many people appear here?", "How many persons can you see?",
        "Count how many humans are in this image.", "What's the head count in this photo?",
        "How big is the group in this picture?", "Give me the number of faces you detect.",
        "Is there anybody in this image?", "Are there several people in this photo?",
        "Is this a photo of a single person or a group?", "How many individuals are shown?",
        "Faces in this pic — how many?", "Tell me the face count.", "Are there more than two people here?",
        "Is this a group photo?", "how many faces do u see", "Is it just one person in the frame?",
    ],
    "smiling": [
        "Is {who} smiling?", "Does {who} look happy?", "Is there a smile on {who}'s face?",
        "Is {who} grinning?", "Would you say {who} is smiling?", "Smiling or not: {who}?",
        "Is {who} showing a smile?", "Does {who} have a smile?", "is {who} smilling", "Any smile from {who}?",
        "Tell me whether {who} smiles.", "Is {who} laughing?", "Does {who} seem cheerful?",
    ],
    "which_smiling": [
        "Which face is smiling?", "Who is smiling in this photo?", "Which of these people are smiling?",
        "Is anyone smiling?", "Who's got a smile on?", "Are all of them smiling?", "Who looks happy here?",
        "Point out the smiling faces.", "Which people in the group are grinning?", "Does everybody smile?",
        "Who isn't smiling?", "whos smiling",
    ],
    "most_smiling": [
        "Who is smiling the most?", "Which person has the biggest smile?", "Who looks the happiest?",
        "Whose smile is the broadest?", "Which face smiles most?", "Who is the least smiley person here?",
        "Find the person with the widest grin.", "Who seems happiest in this group?",
    ],
    "age": [
        "How old does {who} look?", "Roughly what age is {who}?", "What age would you guess for {who}?",
        "How old is {who}?", "Estimate {who}'s age.", "What's {who}'s apparent age?", "Age of {who}?",
        "About how many years old does {who} appear?", "Is {who} in their twenties?", "how old r they",
        "Guess the age of {who}.", "Does {who} look older than 40?", "Is {who} young or old?",
        "What age bracket is {who} in?", "Is {who} a teenager?",
    ],
    "child": [
        "Is this a child?", "Is {who} a kid?", "Is {who} a child or an adult?", "Is {who} underage?",
        "Does {who} look like a minor?", "Is {who} a grown-up?", "Is this person an adult?",
        "Would you say {who} is a child?", "Is {who} a baby?", "Is {who} a little kid?",
    ],
    "oldest": [
        "Which person looks the oldest?", "Who is the oldest here?", "Who appears oldest in the photo?",
        "Which face looks the most senior?", "Who seems to be the eldest?", "Who's the oldest looking person?",
        "Of these people, who looks oldest?", "Which one is the oldest?",
    ],
    "youngest": [
        "Who is the youngest?", "Which person looks the youngest?", "Who appears to be the youngest one?",
        "Which face looks youngest?", "Who seems the most youthful?", "Find the youngest looking person.",
        "Who's the baby of the group?", "Which one is the youngest?",
    ],
    "gender": [
        "Is {who} a man or a woman?", "What gender does {who} appear to be?", "Is {who} male or female?",
        "Does {who} look like a man?", "Is {who} a woman?", "Is {who} a guy or a girl?",
        "What's the perceived gender of {who}?", "Is {who} female?", "Man or woman: {who}?",
    ],
    "expression": [
        "What expression does {who} have?", "How does {who} feel?", "What emotion is {who} showing?",
        "What's the mood of {who}?", "Does {who} look sad?", "Is {who} angry?", "Does {who} look surprised?",
        "Describe {who}'s facial expression.", "Is {who} upset?", "What is {who}'s emotion?",
        "Does {who} seem scared?", "Is {who} in a good mood?", "whats the emotion on {who}'s face",
        "Does {who} look neutral or emotional?", "Is {who} frowning?",
    ],
    "head_pose": [
        "Which way is {who}'s head turned?", "Is {who} facing the camera?", "Describe {who}'s head pose.",
        "Is {who}'s head tilted?", "Is {who} looking down?", "Which direction is {who} facing?",
        "Is {who} turned to the side?", "Is {who} in profile?", "What's the head orientation of {who}?",
        "Is {who}'s face frontal?", "Has {who} turned their head away?",
    ],
    "gaze": [
        "Is {who} looking at the camera?", "Is {who} making eye contact with the camera?",
        "Does {who} look into the lens?", "Is {who} looking straight at us?", "Where is {who} looking?",
        "Is {who} looking away?", "Is {who}'s gaze on the camera?", "Does {who} face and look at the camera?",
        "is {who} lookin at the camera",
    ],
    "who_gaze": [
        "Who is looking at the camera?", "Which people are looking into the lens?", "Is everyone looking at the camera?",
        "Who is looking away from the camera?", "Which faces make eye contact with the camera?",
        "Is anybody looking at the camera?", "Who isn't looking at the camera?",
    ],
    "eyes_closed": [
        "Are {who}'s eyes closed?", "Is {who} blinking?", "Are {who}'s eyes open?", "Does {who} have their eyes shut?",
        "Did {who} blink in this shot?", "Are the eyes of {who} open or closed?", "Is {who} asleep?",
        "Can you see {who}'s eyes open?", "eyes closed on {who}?",
    ],
    "who_eyes_closed": [
        "Whose eyes are closed?", "Did anyone blink?", "Is anyone's eyes shut?", "Who has their eyes closed?",
        "Are everyone's eyes open?", "Which person blinked?", "Does anybody have closed eyes?",
    ],
    "passport": [
        "Is this good enough for a passport photo?", "Would this work as an ID photo?",
        "Can I use this picture for my passport?", "Does this meet passport photo requirements?",
        "Check if this is a valid ID photo.", "Is this suitable for a visa application photo?",
        "Passport photo check, please.", "Would this pass as a driver's licence photo?",
        "Is this photo OK for an official ID?", "Could this be used as a passport picture?",
        "is this ok for a pasport photo",
    ],
    "hair": [
        "What colour is {who}'s hair?", "What color is {who}'s hair?", "Is {who} blond?",
        "Does {who} have dark hair?", "What's {who}'s hair colour?", "Describe {who}'s hair colour.",
        "Is {who}'s hair grey?", "Hair color of {who}?", "Does {who} have red hair?", "Is {who} brunette?",
    ],
    "quality": [
        "Is this photo good enough for face recognition?", "Check the quality of this face image.",
        "Is the face sharp enough?", "Is the image quality ok for matching?", "Is this picture too blurry?",
        "Can this photo be used to recognise the person?", "Rate the face image quality.",
        "Is the face well exposed?", "Is the photo usable for a face match?",
    ],
    "same_person": [
        "Are both pictures of one person?", "Is this the same person in both photos?",
        "Do these two images show the same individual?", "Same person or different people?",
        "Is the person in the first image the one in the second?", "Do the two faces belong to one person?",
        "Are these photos of the same guy?", "Could these two be the same person?",
        "Compare the faces in the two images.", "is it the same person in both",
    ],
    "same_person_one_image": [
        "Are {a} and {b} the same person?", "Is {a} the same person as {b}?", "Do {a} and {b} look like one person?",
        "Compare {a} with {b}: same individual?", "Could {a} and {b} be the same person?",
    ],
    "identify": [
        "Who is this?", "Who is the person in this photo?", "Can you tell me this person's name?",
        "Do you know who this is?", "What's this person's name?", "Recognise this face?", "Who's that?",
        "Identify this person.", "Is this someone famous?", "whos this",
    ],
    "identify_target": [
        "Who is {who}?", "Do you know {who}?", "What's the name of {who}?", "Can you identify {who}?",
        "Who's {who}?",
    ],
    "is_it": [
        "Is this {name}?", "Is this a photo of {name}?", "Can you check whether this is {name}?",
        "Does this look like {name}?", "Is {name} in this picture?", "Am I looking at {name} here?",
    ],
    "describe": [
        "Tell me about this face.", "Analyse this face.", "Describe the person's face.", "Describe {who}.",
        "What can you tell me about {who}?", "Give me a full analysis of {who}.", "Summarise {who}'s face.",
        "Describe everything you see about {who}'s face.",
    ],
    "unmeasured": [
        "What is {who} wearing?", "What's in the background?", "Is {who} wearing makeup?",
        "Where was this photo taken?", "What ethnicity is {who}?", "What race is {who}?",
        "Is {who} rich?", "What is {who}'s job?", "Is {who} married?", "What's {who}'s nationality?",
    ],
}

# a second question in the same conversation, about the face the first one singled out
FOLLOW_UPS: dict[str, list[str]] = {
    "age": ["And how old does {pron} look?", "How old is {pron}?", "What about {poss} age?", "and the age?"],
    "smiling": ["Is {pron} smiling?", "And is {pron} smiling?", "Does {pron} look happy?"],
    "expression": ["What's {poss} expression?", "And how does {pron} feel?", "What emotion does {pron} show?"],
    "gaze": ["Is {pron} looking at the camera?", "And is {pron} looking at the lens?"],
    "hair": ["What colour is {poss} hair?", "And {poss} hair colour?"],
    "head_pose": ["Which way is {pron} facing?", "Is {poss} head turned?"],
    "gender": ["Is that a man or a woman?", "And the perceived gender?"],
}

# follow-ups that switch to another face
SWITCH: list[str] = ["What about {who}?", "And {who}?", "Same question for {who}.", "How about {who}?"]

ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]
POSITION_WORDS: dict[str, list[str]] = {
    "left": ["on the left", "on the far left", "at the left", "leftmost"],
    "right": ["on the right", "on the far right", "at the right", "rightmost"],
    "centre": ["in the centre", "in the middle", "in the center"],
    "top": ["at the top", "up top"],
    "bottom": ["at the bottom", "down at the bottom"],
    "top left": ["at the top left", "in the upper left"],
    "top right": ["at the top right", "in the upper right"],
    "bottom left": ["at the bottom left", "in the lower left"],
    "bottom right": ["at the bottom right", "in the lower right"],
    "largest": ["closest to the camera", "with the biggest face"],
    "smallest": ["furthest from the camera", "with the smallest face"],
}

_KEYS = "qwertyuiopasdfghjklzxcvbnm"


def typo(text: str, rng: random.Random) -> str:
    """One slip of the fingers: a swapped, dropped, doubled or neighbouring letter in a longer word."""
    words = text.split(" ")
    idx = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha() and "{" not in w]
    if not idx:
        return text
    i = rng.choice(idx)
    w = words[i]
    j = rng.randrange(1, len(w) - 1)
    kind = rng.randrange(4)
    if kind == 0:
        w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    elif kind == 1:
        w = w[:j] + w[j + 1:]
    elif kind == 2:
        w = w[:j] + w[j] + w[j:]
    else:
        w = w[:j] + rng.choice(_KEYS) + w[j + 1:]
    words[i] = w
    return " ".join(words)


def casual(text: str, rng: random.Random) -> str:
    """Real typing: sometimes lower case, no final question mark, a typo, or a 'hey'/'please'."""
    r = rng.random()
    if r < 0.15:
        text = typo(text, rng)
    elif r < 0.25:
        text = text.lower().rstrip("?.")
    elif r < 0.3:
        text = "hey, " + text[:1].lower() + text[1:]
    elif r < 0.34:
        text = text.rstrip("?.") + ", please?"
    return text
