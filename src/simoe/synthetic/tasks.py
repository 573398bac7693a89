"""A seeded, deterministic instruction benchmark in the Super-NaturalInstructions task format.

:func:`write_benchmark` writes ``tasks/<name>.json``, ``splits/{train,test,seen}_tasks.txt``,
``categories.json``, ``benchmark.json`` and ``README.md``; the layout is the one
:func:`simoe.data.load_examples` reads. Training categories and held-out (unseen) test
categories share skills: e.g. train reverses a word and sorts a list of numbers, test reverses
and sorts lists of words. The ``seen`` split holds fresh instances of some training tasks in
separate ``<name>__seen.json`` files.

:func:`generic_text` yields instruction-free sentences about the same small world (words,
numbers, colours, animals, countries) that also demonstrate the skills ("The word cat
backwards is tac."); it is the pre-training text of the embedded base model.

Same seed, same arguments -> byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENERATOR_VERSION = "1"
SOURCE = "simoe-synthetic"
TRAIN_SPLIT = "train"
TEST_SPLIT = "test"
SEEN_SPLIT = "seen"
SEEN_SUFFIX = "__seen"
METADATA_NAME = "benchmark.json"
NUM_POSITIVE_EXAMPLES = 2

# --------------------------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------------------------

ANIMALS = (
    "cat", "dog", "horse", "cow", "fox", "bird", "fish", "lion", "tiger", "mouse",
    "sheep", "goat", "duck", "frog", "bear", "wolf", "owl", "pig", "rabbit", "snake",
)
OBJECTS = (
    "table", "chair", "cup", "book", "lamp", "pen", "spoon", "box", "door", "clock",
    "bag", "hat", "shoe", "key", "ball", "bottle", "phone", "plate", "bed", "car",
)
NATURE = (
    "sun", "moon", "star", "tree", "river", "hill", "rain", "snow", "cloud", "stone",
    "sea", "lake", "flower", "grass", "wind", "forest",
)
FOODS = (
    "apple", "bread", "cake", "rice", "milk", "egg", "soup", "pear", "plum", "grape",
    "lemon", "honey", "cheese", "corn", "bean",
)
PLACES = (
    "park", "garden", "kitchen", "school", "market", "house", "beach", "farm", "village",
    "library",
)
COLOURS = (
    "red", "blue", "green", "yellow", "black", "white", "pink", "brown", "purple", "gray",
)
NAMES = (
    "Anna", "Ben", "Clara", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack",
    "Kate", "Leo", "Mia", "Nina", "Oscar", "Paul", "Rosa", "Sam", "Tom", "Zoe",
)
# Lower-case content words for the string and word tasks (no colour words among them).
WORDS = tuple(sorted(set(ANIMALS + OBJECTS + NATURE + FOODS + PLACES)))

CAPITALS = {
    "France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
    "Japan": "Tokyo", "China": "Beijing", "Egypt": "Cairo", "Canada": "Ottawa",
    "Greece": "Athens", "Russia": "Moscow", "Norway": "Oslo", "Peru": "Lima",
    "Kenya": "Nairobi", "Cuba": "Havana", "Poland": "Warsaw", "Austria": "Vienna",
    "Portugal": "Lisbon", "Ireland": "Dublin", "Sweden": "Stockholm", "Chile": "Santiago",
    "Thailand": "Bangkok", "Turkey": "Ankara", "Iran": "Tehran", "Hungary": "Budapest",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Belgium": "Brussels",
    "Australia": "Canberra", "Brazil": "Brasilia", "Nigeria": "Abuja", "Vietnam": "Hanoi",
    "Iraq": "Baghdad", "Syria": "Damascus", "Ghana": "Accra", "Colombia": "Bogota",
    "Venezuela": "Caracas",
}

_OPPOSITE_PAIRS = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
    ("good", "bad"), ("open", "closed"), ("light", "dark"), ("old", "young"),
    ("tall", "short"), ("wet", "dry"), ("full", "empty"), ("early", "late"),
    ("rich", "poor"), ("hard", "soft"), ("loud", "quiet"), ("strong", "weak"),
    ("high", "low"), ("left", "right"), ("day", "night"), ("in", "out"), ("win", "lose"),
    ("first", "last"), ("push", "pull"), ("clean", "dirty"), ("thick", "thin"),
    ("near", "far"), ("cheap", "expensive"), ("before", "after"), ("above", "below"),
)
OPPOSITES = {a: b for a, b in _OPPOSITE_PAIRS} | {b: a for a, b in _OPPOSITE_PAIRS}

PLURALS = {
    "cat": "cats", "dog": "dogs", "bird": "birds", "cup": "cups", "book": "books",
    "tree": "trees", "hat": "hats", "key": "keys", "day": "days", "toy": "toys",
    "apple": "apples", "egg": "eggs", "pen": "pens", "car": "cars", "lamp": "lamps",
    "box": "boxes", "bus": "buses", "fox": "foxes", "dish": "dishes", "glass": "glasses",
    "watch": "watches", "church": "churches", "brush": "brushes", "bench": "benches",
    "class": "classes", "baby": "babies", "city": "cities", "lady": "ladies",
    "story": "stories", "party": "parties", "berry": "berries", "mouse": "mice",
    "child": "children", "foot": "feet", "tooth": "teeth", "man": "men", "woman": "women",
    "sheep": "sheep", "fish": "fish", "goose": "geese", "person": "people", "ox": "oxen",
    "leaf": "leaves", "knife": "knives", "wolf": "wolves", "wife": "wives", "half": "halves",
    "shelf": "shelves", "loaf": "loaves", "potato": "potatoes", "tomato": "tomatoes",
    "hero": "heroes",
}

POSITIVE_WORDS = (
    "good", "great", "happy", "lovely", "wonderful", "nice", "excellent", "fun",
    "beautiful", "amazing",
)
NEGATIVE_WORDS = (
    "bad", "terrible", "sad", "awful", "boring", "ugly", "horrible", "nasty", "dull",
    "annoying",
)
THINGS = (
    "movie", "meal", "trip", "song", "game", "party", "show", "film", "lesson", "dinner",
    "story", "concert",
)
COLOUR_FACTS = (
    ("sky", "blue"), ("grass", "green"), ("snow", "white"), ("night", "black"),
    ("sun", "yellow"), ("blood", "red"), ("soil", "brown"), ("cloud", "gray"),
)
# Countable things that appear with numbers in sentences (regular plurals).
COUNTABLE = ("apple", "egg", "cup", "book", "pen", "hat", "key", "car", "lamp", "bird")

# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def fmt_list(items: Sequence[Any]) -> str:
    """``[a, b, c]`` as the benchmark writes lists."""
    return "[" + ", ".join(str(x) for x in items) + "]"


def _nums(rng: random.Random, lo: int, hi: int, n_lo: int, n_hi: int) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(n_lo, n_hi))]


def _distinct(rng: random.Random, pool: Sequence[str], n_lo: int, n_hi: int) -> list[str]:
    return rng.sample(list(pool), rng.randint(n_lo, n_hi))


def _unique_extreme(
    rng: random.Random, pool: Sequence[str], n_lo: int, n_hi: int, longest: bool
) -> list[str]:
    """Distinct words whose longest (or shortest) word is unique."""
    while True:
        words = _distinct(rng, pool, n_lo, n_hi)
        lengths = [len(w) for w in words]
        target = max(lengths) if longest else min(lengths)
        if lengths.count(target) == 1:
            return words


def _story(rng: random.Random) -> str:
    """A short sentence with no punctuation and no colour or sentiment word."""
    name, animal, obj = rng.choice(NAMES), rng.choice(ANIMALS), rng.choice(OBJECTS)
    place, n = rng.choice(PLACES), rng.randint(2, 9)
    noun = rng.choice(COUNTABLE)
    options = (
        f"{name} saw a {animal} in the {place}",
        f"The {animal} slept under the {obj}",
        f"{name} put the {obj} in the {place}",
        f"A {animal} ran to the {place}",
        f"{name} and the {animal} walked to the {place} together",
        f"{name} has {n} {PLURALS[noun]}",
        f"We found a {obj} near the {place}",
        f"The {obj} is next to the {animal}",
        f"{name} likes to read in the {place} every day",
    )
    return rng.choice(options)


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


# --------------------------------------------------------------------------------------------
# Instance makers: rng -> (input, output). Outputs are computed exactly from the sampled data.
# --------------------------------------------------------------------------------------------

Maker = Callable[[random.Random], tuple[str, str]]


def _reverse_word(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    return w, w[::-1]


def _uppercase(rng: random.Random) -> tuple[str, str]:
    text = " ".join(_distinct(rng, WORDS + COLOURS, 1, 3))
    return text, text.upper()


def _first_letters(rng: random.Random) -> tuple[str, str]:
    words = _distinct(rng, WORDS + COLOURS, 3, 5)
    return " ".join(words), "".join(w[0] for w in words)


def _last_letter(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS + COLOURS)
    return w, w[-1]


def _count_words(rng: random.Random) -> tuple[str, str]:
    s = _story(rng)
    return s, str(len(s.split()))


def _longest_word(rng: random.Random) -> tuple[str, str]:
    words = _unique_extreme(rng, WORDS, 3, 5, longest=True)
    return " ".join(words), max(words, key=len)


def _last_word(rng: random.Random) -> tuple[str, str]:
    s = _story(rng)
    return s, s.split()[-1]


def _word_length(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS + COLOURS)
    return w, str(len(w))


def _sort_numbers(rng: random.Random) -> tuple[str, str]:
    xs = _nums(rng, 0, 30, 3, 6)
    return fmt_list(xs), fmt_list(sorted(xs))


def _max_number(rng: random.Random) -> tuple[str, str]:
    xs = _nums(rng, 0, 30, 3, 6)
    return fmt_list(xs), str(max(xs))


def _first_k(rng: random.Random) -> tuple[str, str]:
    k = rng.randint(1, 4)
    xs = _nums(rng, 0, 30, k + 1, 7)
    return f"{k}, {fmt_list(xs)}", fmt_list(xs[:k])


def _remove_duplicates(rng: random.Random) -> tuple[str, str]:
    while True:
        xs = _nums(rng, 0, 9, 4, 7)
        if len(set(xs)) < len(xs):
            break
    return fmt_list(xs), fmt_list(list(dict.fromkeys(xs)))


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    return f"{a} and {b}", str(a + b)


def _subtract(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(0, 30)
    b = rng.randint(0, a)
    return f"{a} and {b}", str(a - b)


def _double(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 50)
    return str(n), str(2 * n)


def _successor(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 99)
    return str(n), str(n + 1)


def _sentiment(rng: random.Random) -> tuple[str, str]:
    positive = rng.random() < 0.5
    adj = rng.choice(POSITIVE_WORDS if positive else NEGATIVE_WORDS)
    thing, name, place = rng.choice(THINGS), rng.choice(NAMES), rng.choice(PLACES)
    options = (
        f"The {thing} was {adj}",
        f"I think the {thing} is {adj}",
        f"{name} said the {thing} was {adj}",
        f"We had {_a(adj)} {adj} day at the {place}",
        f"What {_a(adj)} {adj} {thing}",
        f"The {thing} at the {place} was really {adj}",
    )
    return rng.choice(options), "positive" if positive else "negative"


def _is_even(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 99)
    return str(n), _yes_no(n % 2 == 0)


def _animal_or_object(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        return rng.choice(ANIMALS), "animal"
    return rng.choice(OBJECTS), "object"


def _extract_numbers(rng: random.Random) -> tuple[str, str]:
    name, place = rng.choice(NAMES), rng.choice(PLACES)
    a, b, c = (PLURALS[w] for w in rng.sample(COUNTABLE, 3))
    x, y, z = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 30)
    options = (
        (f"{name} bought {x} {a} at the {place}", [x]),
        (f"{name} bought {x} {a} and {y} {b} at the {place}", [x, y]),
        (f"There are {x} {a} and {y} {b} in the {place}", [x, y]),
        (f"{name} found {x} {a}, {y} {b} and {z} {c}", [x, y, z]),
        (f"The {place} has {x} {a}", [x]),
    )
    text, nums = rng.choice(options)
    return text, fmt_list(nums)


def _extract_name(rng: random.Random) -> tuple[str, str]:
    name, animal, obj, place = (
        rng.choice(NAMES), rng.choice(ANIMALS), rng.choice(OBJECTS), rng.choice(PLACES),
    )
    options = (
        f"The {animal} followed {name} to the {place}",
        f"Yesterday {name} found a {obj} in the {place}",
        f"A {animal} looked at {name} from the {place}",
        f"{name} carried the {obj} to the {place}",
        f"The {obj} belongs to {name}",
    )
    return rng.choice(options), name


def _extract_colour(rng: random.Random) -> tuple[str, str]:
    colour, name, animal, obj, place = (
        rng.choice(COLOURS), rng.choice(NAMES), rng.choice(ANIMALS), rng.choice(OBJECTS),
        rng.choice(PLACES),
    )
    options = (
        f"{name} painted the {obj} {colour}",
        f"A {colour} {animal} ran across the {place}",
        f"The {obj} in the {place} is {colour}",
        f"{name} has a {colour} {obj}",
        f"We saw a {colour} {animal} near the {obj}",
    )
    return rng.choice(options), colour


def _extract_animal(rng: random.Random) -> tuple[str, str]:
    animal, name, obj, place = (
        rng.choice(ANIMALS), rng.choice(NAMES), rng.choice(OBJECTS), rng.choice(PLACES),
    )
    options = (
        f"{name} found a {animal} under the {obj}",
        f"The {animal} is sleeping in the {place}",
        f"There is a {animal} next to the {obj}",
        f"{name} took the {animal} to the {place}",
    )
    return rng.choice(options), animal


def _opposite(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(sorted(OPPOSITES))
    return w, OPPOSITES[w]


def _plural(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(sorted(PLURALS))
    return w, PLURALS[w]


def _capital(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(sorted(CAPITALS))
    return country, CAPITALS[country]


def _copy_text(rng: random.Random) -> tuple[str, str]:
    s = _story(rng)
    return s, s


def _join_commas(rng: random.Random) -> tuple[str, str]:
    words = _distinct(rng, WORDS + COLOURS, 2, 5)
    return " ".join(words), ", ".join(words)


def _join_hyphens(rng: random.Random) -> tuple[str, str]:
    words = _distinct(rng, WORDS + COLOURS, 2, 4)
    return " ".join(words), "-".join(words)


def _lowercase(rng: random.Random) -> tuple[str, str]:
    words = _story(rng).split()
    styles = (str.upper, str.title, str.lower)
    text = " ".join(rng.choice(styles)(w) for w in words)
    if text == text.lower():
        text = text.upper()
    return text, text.lower()


# Unseen (test) categories: the same skills applied in new ways.


def _reverse_word_list(rng: random.Random) -> tuple[str, str]:
    words = _distinct(rng, WORDS, 3, 5)
    return fmt_list(words), fmt_list(words[::-1])


def _sort_word_list(rng: random.Random) -> tuple[str, str]:
    words = _distinct(rng, WORDS, 3, 5)
    return fmt_list(words), fmt_list(sorted(words))


def _reverse_each_word(rng: random.Random) -> tuple[str, str]:
    words = _distinct(rng, WORDS, 2, 3)
    return fmt_list(words), fmt_list([w[::-1] for w in words])


def _shortest_word(rng: random.Random) -> tuple[str, str]:
    words = _unique_extreme(rng, WORDS, 3, 5, longest=False)
    return fmt_list(words), min(words, key=len)


def _sum_list(rng: random.Random) -> tuple[str, str]:
    xs = _nums(rng, 0, 15, 2, 4)
    return fmt_list(xs), str(sum(xs))


def _count_items(rng: random.Random) -> tuple[str, str]:
    xs = _nums(rng, 0, 30, 2, 8)
    return fmt_list(xs), str(len(xs))


def _min_number(rng: random.Random) -> tuple[str, str]:
    xs = _nums(rng, 0, 30, 3, 6)
    return fmt_list(xs), str(min(xs))


def _count_even(rng: random.Random) -> tuple[str, str]:
    xs = _nums(rng, 0, 30, 3, 6)
    return fmt_list(xs), str(sum(x % 2 == 0 for x in xs))


def _verify_capital(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(sorted(CAPITALS))
    true = rng.random() < 0.5
    city = CAPITALS[country]
    if not true:
        city = rng.choice(sorted(c for c in CAPITALS.values() if c != city))
    return f"{city} is the capital of {country}", _yes_no(true)


def _verify_opposite(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(sorted(OPPOSITES))
    true = rng.random() < 0.5
    other = OPPOSITES[word]
    if not true:
        other = rng.choice(sorted(w for w in OPPOSITES if w not in (word, OPPOSITES[word])))
    return f"The opposite of {word} is {other}", _yes_no(true)


def _verify_sum(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    true = rng.random() < 0.5
    c = a + b
    if not true:
        c = rng.choice([x for x in range(max(0, c - 5), c + 6) if x != a + b])
    return f"{a} plus {b} is {c}", _yes_no(true)


def _verify_animal(rng: random.Random) -> tuple[str, str]:
    true = rng.random() < 0.5
    word = rng.choice(ANIMALS if true else OBJECTS)
    return f"{_cap(_a(word))} {word} is an animal", _yes_no(true)


# --------------------------------------------------------------------------------------------
# Task registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """One task: its category, split, definition phrasings, instance maker and explanation
    template (``{input}``/``{output}`` placeholders)."""

    slug: str
    category: str
    split: str
    domain: str
    definitions: tuple[str, ...]
    make: Maker
    explanation: str
    seen: bool = False


_STR, _WORD, _LIST, _ARITH = (
    "String Manipulation", "Word Analysis", "List Operations", "Arithmetic",
)
_CLS, _EXT, _REL, _FMT = (
    "Classification", "Information Extraction", "Word Relations", "Text Formatting",
)
_WLIST, _NLIST, _VERIFY = "Word List Manipulation", "Numeric List Reasoning", "Fact Verification"


def _t(slug: str, category: str, split: str, domain: str, definitions: Sequence[str],
       make: Maker, explanation: str, seen: bool = False) -> TaskSpec:
    return TaskSpec(slug, category, split, domain, tuple(definitions), make, explanation, seen)


_TR, _TE = TRAIN_SPLIT, TEST_SPLIT
TASKS: tuple[TaskSpec, ...] = (
    # ---- training categories -----------------------------------------------------------
    _t("reverse_word", _STR, _TR, "Language", (
        "In this task, you are given a word. Write the word backwards, letter by letter.",
        "Reverse the given word: output its letters in the opposite order.",
        "You will see a single word. Your answer should be that word spelled backwards.",
    ), _reverse_word, "The letters of '{input}' read from right to left give '{output}'.",
        seen=True),
    _t("uppercase_text", _STR, _TR, "Language", (
        "Rewrite the given text using only capital letters.",
        "In this task, you are given some words. Convert every letter to upper case.",
        "Output the input text in upper case.",
    ), _uppercase, "Every letter of '{input}' is written in upper case."),
    _t("first_letters", _STR, _TR, "Language", (
        "You are given a few words. Write the first letter of each word, joined together.",
        "Take the first letter of every word in the input and put them together in order.",
        "In this task, output a string made of the initial letter of each given word.",
    ), _first_letters, "The words start with the letters of '{output}'."),
    _t("last_letter", _STR, _TR, "Language", (
        "Given a word, output its last letter.",
        "In this task, you are given a word. Write the final letter of the word.",
        "What letter does the given word end with? Answer with that letter only.",
    ), _last_letter, "The word '{input}' ends with the letter '{output}'."),
    _t("count_words", _WORD, _TR, "Language", (
        "Count the number of words in the given sentence and output the number.",
        "In this task, you are given a sentence. How many words does it contain?",
        "You will read a short sentence. Answer with how many words it has.",
    ), _count_words, "The sentence has {output} words.", seen=True),
    _t("longest_word", _WORD, _TR, "Language", (
        "You are given a few words. Output the longest of them.",
        "In this task, find the word with the most letters among the given words.",
        "Which of the given words is the longest? Write that word.",
    ), _longest_word, "'{output}' has more letters than any other word."),
    _t("last_word", _WORD, _TR, "Language", (
        "Given a sentence, output its last word.",
        "In this task, you are given a sentence. Write the final word of the sentence.",
        "Copy the word that comes at the end of the given sentence.",
    ), _last_word, "The sentence ends with the word '{output}'."),
    _t("word_length", _WORD, _TR, "Language", (
        "Count the letters in the given word.",
        "In this task, you are given a word. Output how many letters it has.",
        "How long is the given word? Answer with the number of its letters.",
    ), _word_length, "'{input}' is made of {output} letters."),
    _t("sort_numbers", _LIST, _TR, "Mathematics", (
        "Sort the given list of numbers from smallest to largest.",
        "In this task, you are given a list of numbers. Return the list in increasing order.",
        "Arrange the numbers of the list in ascending order.",
    ), _sort_numbers, "In ascending order the list is {output}.", seen=True),
    _t("max_number", _LIST, _TR, "Mathematics", (
        "Find the largest number in the given list.",
        "In this task, you are given a list of numbers. Output the maximum.",
        "Which number in the list is the biggest? Write it.",
    ), _max_number, "No number in the list is larger than {output}."),
    _t("first_k_elements", _LIST, _TR, "Mathematics", (
        "You are given a number k and a list. Output the first k elements of the list.",
        "In this task, the input is k followed by a list. Return the list of its first k "
        "items.",
        "Keep only the first k numbers of the list, where k is given before the list.",
    ), _first_k, "The first elements of the list are {output}."),
    _t("remove_duplicates", _LIST, _TR, "Mathematics", (
        "Remove the repeated numbers from the list, keeping the first occurrence of each.",
        "In this task, you are given a list with duplicates. Output the list without "
        "duplicates, in the original order.",
        "Delete every number that already appeared earlier in the list.",
    ), _remove_duplicates, "Without repeats the list is {output}."),
    _t("add_numbers", _ARITH, _TR, "Mathematics", (
        "Add the two given numbers and output the sum.",
        "In this task, you are given two numbers. What is their sum?",
        "Compute the total of the two numbers.",
    ), _add, "Adding the numbers gives {output}.", seen=True),
    _t("subtract_numbers", _ARITH, _TR, "Mathematics", (
        "Subtract the second number from the first and output the result.",
        "In this task, you are given two numbers. Output the first minus the second.",
        "What is the difference when the second number is taken away from the first?",
    ), _subtract, "The first number minus the second is {output}."),
    _t("double_number", _ARITH, _TR, "Mathematics", (
        "Multiply the given number by two.",
        "In this task, you are given a number. Output twice that number.",
        "Double the number.",
    ), _double, "Two times {input} is {output}."),
    _t("next_number", _ARITH, _TR, "Mathematics", (
        "Output the number that comes right after the given number.",
        "In this task, you are given a number. Add one to it.",
        "What is the next whole number after the given one?",
    ), _successor, "After {input} comes {output}."),
    _t("sentiment", _CLS, _TR, "Reviews", (
        "Classify the sentiment of the sentence as positive or negative.",
        "In this task, you are given a sentence. Answer positive if it expresses a good "
        "feeling and negative otherwise.",
        "Is the given sentence positive or negative?",
    ), _sentiment, "The sentence sounds {output}.", seen=True),
    _t("is_even", _CLS, _TR, "Mathematics", (
        "Answer yes if the given number is even and no if it is odd.",
        "In this task, you are given a number. Is it an even number? Answer yes or no.",
        "Decide whether the number can be divided by two. Reply yes or no.",
    ), _is_even, "The answer for {input} is {output}."),
    _t("animal_or_object", _CLS, _TR, "Animals", (
        "Classify the given word as an animal or an object.",
        "In this task, you are given a noun. Answer animal if it is an animal and object "
        "otherwise.",
        "Is the given thing an animal or an object?",
    ), _animal_or_object, "A {input} is an {output}."),
    _t("extract_numbers", _EXT, _TR, "Language", (
        "List all the numbers that appear in the sentence, in order.",
        "In this task, you are given a sentence. Extract the numbers it mentions as a list.",
        "Find every number in the given sentence and write them as a list.",
    ), _extract_numbers, "The sentence mentions the numbers {output}.", seen=True),
    _t("extract_name", _EXT, _TR, "Language", (
        "Find the name of the person in the sentence.",
        "In this task, you are given a sentence about a person. Output the person's name.",
        "Which person is mentioned in the sentence? Write the name.",
    ), _extract_name, "The person in the sentence is {output}."),
    _t("extract_colour", _EXT, _TR, "Language", (
        "Find the colour mentioned in the sentence.",
        "In this task, you are given a sentence. Output the colour word it contains.",
        "Which colour appears in the given sentence?",
    ), _extract_colour, "The colour in the sentence is {output}."),
    _t("extract_animal", _EXT, _TR, "Animals", (
        "Find the animal mentioned in the sentence.",
        "In this task, you are given a sentence. Output the animal it talks about.",
        "Which animal appears in the given sentence? Write it.",
    ), _extract_animal, "The animal in the sentence is the {output}."),
    _t("opposite_word", _REL, _TR, "Language", (
        "Write the opposite of the given word.",
        "In this task, you are given a word. Output a word with the opposite meaning.",
        "Give the antonym of the word.",
    ), _opposite, "The opposite of {input} is {output}.", seen=True),
    _t("plural_noun", _REL, _TR, "Language", (
        "Write the plural form of the given noun.",
        "In this task, you are given a noun in the singular. Output its plural.",
        "What do we call more than one of the given thing? Write the plural.",
    ), _plural, "One {input}, two {output}."),
    _t("country_capital", _REL, _TR, "Geography", (
        "Name the capital city of the given country.",
        "In this task, you are given a country. Output its capital.",
        "What is the capital of the country?",
    ), _capital, "{output} is the capital of {input}."),
    _t("copy_text", _FMT, _TR, "Language", (
        "Repeat the given text exactly.",
        "In this task, you are given a sentence. Copy it without any change.",
        "Write the input again, word for word.",
    ), _copy_text, "The output is the input unchanged.", seen=True),
    _t("join_with_commas", _FMT, _TR, "Language", (
        "Join the given words with commas.",
        "In this task, you are given words separated by spaces. Separate them with a comma "
        "and a space instead.",
        "Put a comma between the given words.",
    ), _join_commas, "The words are separated by commas: {output}."),
    _t("join_with_hyphens", _FMT, _TR, "Language", (
        "Join the given words with hyphens.",
        "In this task, you are given words separated by spaces. Connect them with hyphens "
        "instead.",
        "Replace each space between the words with a hyphen.",
    ), _join_hyphens, "The words are connected by hyphens: {output}."),
    _t("lowercase_text", _FMT, _TR, "Language", (
        "Rewrite the given text using only small letters.",
        "In this task, you are given a sentence with mixed case. Convert it to lower case.",
        "Output the input text in lower case.",
    ), _lowercase, "Every letter is written in lower case."),
    # ---- unseen (test) categories --------------------------------------------------------
    _t("reverse_word_list", _WLIST, _TE, "Language", (
        "You are given a list of words. Output the list in reverse order.",
        "In this task, reverse the order of the words in the list.",
        "Write the words of the list from last to first, as a list.",
    ), _reverse_word_list, "Read from the end, the list is {output}."),
    _t("sort_word_list", _WLIST, _TE, "Language", (
        "Sort the given list of words in alphabetical order.",
        "In this task, you are given a list of words. Return it sorted from A to Z.",
        "Arrange the words of the list alphabetically.",
    ), _sort_word_list, "In alphabetical order the list is {output}."),
    _t("reverse_each_word", _WLIST, _TE, "Language", (
        "Write every word of the list backwards, keeping the order of the list.",
        "In this task, you are given a list of words. Reverse the letters of each word.",
        "Spell each word in the list backwards and return the new list.",
    ), _reverse_each_word, "Each word spelled backwards gives {output}."),
    _t("shortest_word", _WLIST, _TE, "Language", (
        "Find the shortest word in the given list.",
        "In this task, you are given a list of words. Output the word with the fewest "
        "letters.",
        "Which word of the list is the shortest? Write it.",
    ), _shortest_word, "'{output}' has fewer letters than the other words."),
    _t("sum_of_list", _NLIST, _TE, "Mathematics", (
        "Add up all the numbers in the list.",
        "In this task, you are given a list of numbers. Output their sum.",
        "What is the total of the numbers in the list?",
    ), _sum_list, "The numbers add up to {output}."),
    _t("count_list_items", _NLIST, _TE, "Mathematics", (
        "Count how many numbers are in the list.",
        "In this task, you are given a list. Output the number of its elements.",
        "How many items does the given list have?",
    ), _count_items, "The list has {output} elements."),
    _t("min_number", _NLIST, _TE, "Mathematics", (
        "Find the smallest number in the given list.",
        "In this task, you are given a list of numbers. Output the minimum.",
        "Which number in the list is the lowest? Write it.",
    ), _min_number, "No number in the list is smaller than {output}."),
    _t("count_even_numbers", _NLIST, _TE, "Mathematics", (
        "Count the even numbers in the list.",
        "In this task, you are given a list of numbers. How many of them are even?",
        "Output how many numbers in the list can be divided by two.",
    ), _count_even, "The list contains {output} even numbers."),
    _t("verify_capital", _VERIFY, _TE, "Geography", (
        "Is the statement about a capital city true? Answer yes or no.",
        "In this task, you are given a statement about a country's capital. Answer yes if it "
        "is correct and no if it is wrong.",
        "Check whether the city named is really the capital of the country. Reply yes or no.",
    ), _verify_capital, "The correct answer is {output}."),
    _t("verify_opposite", _VERIFY, _TE, "Language", (
        "Is the statement about opposite words true? Answer yes or no.",
        "In this task, you are given a claim that two words are opposites. Answer yes if it "
        "is right and no otherwise.",
        "Decide whether the second word really means the opposite of the first. Reply yes "
        "or no.",
    ), _verify_opposite, "The correct answer is {output}."),
    _t("verify_sum", _VERIFY, _TE, "Mathematics", (
        "Is the addition correct? Answer yes or no.",
        "In this task, you are given a sum of two numbers. Answer yes if the result is right "
        "and no if it is wrong.",
        "Check the arithmetic statement and reply yes or no.",
    ), _verify_sum, "The correct answer is {output}."),
    _t("verify_animal", _VERIFY, _TE, "Animals", (
        "Is the statement true? Answer yes or no.",
        "In this task, you are given a claim that something is an animal. Answer yes if it "
        "is true and no if it is false.",
        "Decide whether the named thing really is an animal. Reply yes or no.",
    ), _verify_animal, "The correct answer is {output}."),
)


def task_name(index: int, spec: TaskSpec) -> str:
    """File name (without ``.json``) of the ``index``-th task (0-based), e.g. ``synth001_x``."""
    return f"synth{index + 1:03d}_{spec.slug}"


def task_names() -> dict[str, TaskSpec]:
    """Task name -> spec, in registry order."""
    return {task_name(i, spec): spec for i, spec in enumerate(TASKS)}


def categories(split: str | None = None) -> list[str]:
    """Category names in registry order (only those of ``split`` if given)."""
    out: list[str] = []
    for spec in TASKS:
        if (split is None or spec.split == split) and spec.category not in out:
            out.append(spec.category)
    return out


# --------------------------------------------------------------------------------------------
# Writing the benchmark
# --------------------------------------------------------------------------------------------


def _rng(*parts: Any) -> random.Random:
    return random.Random(":".join(str(p) for p in ("simoe-synthetic", GENERATOR_VERSION, *parts)))


def _instance_id(name: str, seed: int, index: int) -> str:
    digest = hashlib.sha1(f"{seed}:{name}:{index}".encode()).hexdigest()[:16]
    return f"{name}-{digest}"


def _draw_pool(spec: TaskSpec, rng: random.Random, want: int) -> list[tuple[str, str]]:
    """Up to ``want`` instances with distinct inputs (fewer if the task's input space is small)."""
    seen: set[str] = set()
    pool: list[tuple[str, str]] = []
    for _ in range(40 * want + 200):
        inp, out = spec.make(rng)
        if inp not in seen:
            seen.add(inp)
            pool.append((inp, out))
            if len(pool) == want:
                break
    return pool


@dataclass
class _TaskData:
    name: str
    spec: TaskSpec
    definition: str
    positives: list[tuple[str, str]]
    train: list[tuple[str, str]]
    held_out: list[tuple[str, str]]


def _task_data(index: int, spec: TaskSpec, seed: int, n: int, n_seen: int) -> _TaskData:
    name = task_name(index, spec)
    definition = _rng(seed, name, "definition").choice(spec.definitions)
    n_held = n_seen if spec.seen else 0
    pool = _draw_pool(spec, _rng(seed, name, "instances"), NUM_POSITIVE_EXAMPLES + n + n_held)
    positives, rest = pool[:NUM_POSITIVE_EXAMPLES], pool[NUM_POSITIVE_EXAMPLES:]
    if len(rest) < n + n_held:  # small input space: give the held-out split about a quarter
        n_held = min(n_held, len(rest) // 4)
    held_out = rest[len(rest) - n_held :] if n_held else []
    return _TaskData(name, spec, definition, positives, rest[: len(rest) - n_held], held_out)


def _task_json(
    name: str, data: _TaskData, instances: list[tuple[str, str]], seed: int
) -> dict[str, Any]:
    spec = data.spec
    return {
        "Contributors": ["simoe synthetic generator"],
        "Source": [SOURCE],
        "Categories": [spec.category],
        "Reasoning": [],
        "Definition": [data.definition],
        "Input_language": ["English"],
        "Output_language": ["English"],
        "Instruction_language": ["English"],
        "Domains": [spec.domain],
        "Positive Examples": [
            {
                "input": inp,
                "output": out,
                "explanation": spec.explanation.format(input=inp, output=out),
            }
            for inp, out in data.positives
        ],
        "Negative Examples": [],
        "Instances": [
            {"id": _instance_id(name, seed, i), "input": inp, "output": [out]}
            for i, (inp, out) in enumerate(instances)
        ],
    }


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=4, ensure_ascii=False) + "\n"


def _readme(seed: int, tasks: list[_TaskData], meta: dict[str, Any]) -> str:
    lines = [
        "# simoe synthetic instruction benchmark",
        "",
        f"Generated by `simoe.synthetic.write_benchmark` (generator version "
        f"{GENERATOR_VERSION}, seed {seed}). Same seed, same files.",
        "",
        "Super-NaturalInstructions task format: `tasks/<name>.json` (Definition, 2 positive "
        "examples, instances), `splits/<split>_tasks.txt`, `categories.json`. Load with "
        "`simoe.data.load_examples(DIR, split)` for split `train`, `test` or `seen`.",
        "",
        "- `train`: the training categories.",
        "- `test`: held-out categories (never trained on) whose skills overlap with training "
        "ones (reversal, sorting, counting, min/max, facts, yes/no answers).",
        "- `seen`: fresh instances (inputs not in the training files) of some training tasks, "
        f"in `<name>{SEEN_SUFFIX}.json`.",
        "",
        "Tasks with a small input space (e.g. country -> capital) have fewer instances: every "
        "input occurs at most once per task.",
        "",
        "| split | category | task | instances | definition |",
        "|---|---|---|---|---|",
    ]
    for data in tasks:
        lines.append(
            f"| {data.spec.split} | {data.spec.category} | {data.name} | {len(data.train)} "
            f"| {data.definition} |"
        )
    lines += [
        "",
        f"{meta['num_tasks']['train']} training tasks in {len(categories(TRAIN_SPLIT))} "
        f"categories, {meta['num_tasks']['test']} test tasks in "
        f"{len(categories(TEST_SPLIT))} categories, {meta['num_tasks']['seen']} seen tasks.",
        "",
    ]
    return "\n".join(lines)


def _build_files(seed: int, n: int, n_seen: int) -> dict[str, str]:
    tasks = [_task_data(i, spec, seed, n, n_seen) for i, spec in enumerate(TASKS)]
    files: dict[str, str] = {}
    splits: dict[str, list[str]] = {TRAIN_SPLIT: [], TEST_SPLIT: [], SEEN_SPLIT: []}
    cats: dict[str, str] = {}
    for data in tasks:
        files[f"tasks/{data.name}.json"] = _dump(_task_json(data.name, data, data.train, seed))
        splits[data.spec.split].append(data.name)
        cats[data.name] = data.spec.category
        if data.held_out:
            seen_name = data.name + SEEN_SUFFIX
            files[f"tasks/{seen_name}.json"] = _dump(
                _task_json(seen_name, data, data.held_out, seed)
            )
            splits[SEEN_SPLIT].append(seen_name)
            cats[seen_name] = data.spec.category
    for split, names in splits.items():
        files[f"splits/{split}_tasks.txt"] = "".join(f"{name}\n" for name in names)
    files["categories.json"] = _dump(cats)
    meta = {
        "generator": SOURCE,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "instances_per_task": n,
        "seen_instances_per_task": n_seen,
        "categories": {split: categories(split) for split in (TRAIN_SPLIT, TEST_SPLIT)},
        "num_tasks": {split: len(names) for split, names in splits.items()},
        "num_instances": {
            TRAIN_SPLIT: sum(len(d.train) for d in tasks if d.spec.split == TRAIN_SPLIT),
            TEST_SPLIT: sum(len(d.train) for d in tasks if d.spec.split == TEST_SPLIT),
            SEEN_SPLIT: sum(len(d.held_out) for d in tasks),
        },
    }
    files[METADATA_NAME] = _dump(meta)
    files["README.md"] = _readme(seed, tasks, meta)
    return files


def _is_replaceable(path: Path) -> bool:
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    return not any(path.iterdir()) or (path / METADATA_NAME).is_file()


def write_benchmark(
    output: str | Path,
    seed: int = 0,
    instances_per_task: int = 60,
    *,
    seen_instances_per_task: int | None = None,
) -> Path:
    """Write the benchmark to ``output`` and return its path.

    Every task file holds up to ``instances_per_task`` instances with distinct inputs (fewer
    for tasks with a small input space); seen files up to ``seen_instances_per_task``
    (default: a third of ``instances_per_task``, at least 1). ``output`` must be absent, empty
    or a previous benchmark (which is replaced); files are written to a temporary sibling
    directory first, then moved into place.
    """
    if instances_per_task < 1:
        raise ValueError("instances_per_task must be >= 1")
    n_seen = (
        max(1, instances_per_task // 3) if seen_instances_per_task is None
        else seen_instances_per_task
    )
    if n_seen < 1:
        raise ValueError("seen_instances_per_task must be >= 1")
    out = Path(output)
    if not _is_replaceable(out):
        raise FileExistsError(f"{out} exists and is not a simoe synthetic benchmark; not replacing")
    files = _build_files(seed, instances_per_task, n_seen)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-benchmark"
    if tmp.exists():
        shutil.rmtree(tmp)
    for rel, text in files.items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
    if out.exists():
        old = out.parent / f".{out.name}.old-benchmark"
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    return out


# --------------------------------------------------------------------------------------------
# Generic (instruction-free) pre-training text
# --------------------------------------------------------------------------------------------


def _g_reverse(r: random.Random) -> str:
    w = r.choice(WORDS + COLOURS)
    return r.choice((
        f"The word {w} backwards is {w[::-1]}.",
        f"Spelled backwards, {w} is {w[::-1]}.",
        f"If you reverse {w}, you get {w[::-1]}.",
    ))


def _g_case(r: random.Random) -> str:
    w = r.choice(WORDS + COLOURS)
    return r.choice((
        f"The word {w} in capital letters is {w.upper()}.",
        f"{w.upper()} is {w} written in big letters.",
        f"In small letters, {w.upper()} is {w}.",
    ))


def _g_letters(r: random.Random) -> str:
    w = r.choice(WORDS + COLOURS)
    words = _distinct(r, WORDS + COLOURS, 3, 4)
    return r.choice((
        f"The word {w} starts with {w[0]} and ends with {w[-1]}.",
        f"The last letter of {w} is {w[-1]}.",
        f"The word {w} has {len(w)} letters.",
        f"The first letters of {' '.join(words)} are {''.join(x[0] for x in words)}.",
    ))


def _g_words(r: random.Random) -> str:
    s = _story(r)
    long_words = _unique_extreme(r, WORDS, 3, 4, longest=True)
    short_words = _unique_extreme(r, WORDS, 3, 4, longest=False)
    words = _distinct(r, WORDS, 3, 4)
    return r.choice((
        f"{s}. That sentence has {len(s.split())} words.",
        f"{s}. The last word is {s.split()[-1]}.",
        f"Of {', '.join(long_words)}, the longest word is {max(long_words, key=len)}.",
        f"Of {', '.join(short_words)}, the shortest word is {min(short_words, key=len)}.",
        f"In alphabetical order, {', '.join(words)} become {', '.join(sorted(words))}.",
        f"Backwards, the list {', '.join(words)} is {', '.join(words[::-1])}.",
    ))


def _g_lists(r: random.Random) -> str:
    xs = _nums(r, 0, 30, 3, 6)
    k = r.randint(2, len(xs) - 1)
    dup = _nums(r, 0, 9, 4, 6)
    return r.choice((
        f"Sorted from small to large, {fmt_list(xs)} becomes {fmt_list(sorted(xs))}.",
        f"The largest number in {fmt_list(xs)} is {max(xs)}.",
        f"The smallest number in {fmt_list(xs)} is {min(xs)}.",
        f"The first {k} numbers of {fmt_list(xs)} are {fmt_list(xs[:k])}.",
        f"Without repeats, {fmt_list(dup)} is {fmt_list(list(dict.fromkeys(dup)))}.",
        f"The numbers {fmt_list(xs)} add up to {sum(xs)}.",
        f"The list {fmt_list(xs)} has {len(xs)} numbers.",
        f"The list {fmt_list(xs)} has {sum(x % 2 == 0 for x in xs)} even numbers.",
    ))


def _g_arith(r: random.Random) -> str:
    a, b = r.randint(0, 20), r.randint(0, 20)
    big, small = max(a, b) + r.randint(0, 10), min(a, b)
    n = r.randint(0, 99)
    return r.choice((
        f"{a} plus {b} is {a + b}.",
        f"{a} and {b} make {a + b}.",
        f"{big} minus {small} is {big - small}.",
        f"Twice {n % 51} is {2 * (n % 51)}.",
        f"After {n} comes {n + 1}.",
        f"{n} is an {'even' if n % 2 == 0 else 'odd'} number.",
    ))


def _g_feelings(r: random.Random) -> str:
    pos, neg = r.choice(POSITIVE_WORDS), r.choice(NEGATIVE_WORDS)
    name, thing = r.choice(NAMES), r.choice(THINGS)
    return r.choice((
        f"The {thing} was {pos}, so {name} was happy.",
        f"The {thing} was {neg}, so {name} was sad.",
        f"{_cap(pos)} is a positive word.",
        f"{_cap(neg)} is a negative word.",
        f"{name} did not like the {thing} because it was {neg}.",
        f"{name} loved the {thing} because it was {pos}.",
    ))


def _g_things(r: random.Random) -> str:
    animal, obj = r.choice(ANIMALS), r.choice(OBJECTS)
    return r.choice((
        f"{_cap(_a(animal))} {animal} is an animal.",
        f"{_cap(_a(obj))} {obj} is an object, not an animal.",
        f"{_cap(_a(animal))} {animal} is alive, but {_a(obj)} {obj} is not.",
    ))


def _g_story(r: random.Random) -> str:
    name, animal, obj = r.choice(NAMES), r.choice(ANIMALS), r.choice(OBJECTS)
    place = r.choice(PLACES)
    colour, n = r.choice(COLOURS), r.randint(2, 30)
    noun = PLURALS[r.choice(COUNTABLE)]
    sky, sky_colour = r.choice(COLOUR_FACTS)
    return r.choice((
        f"{_story(r)}.",
        f"{name} has a {colour} {obj}.",
        f"A {colour} {animal} ran across the {place}.",
        f"{name} bought {n} {noun} at the {place}.",
        f"There are {n} {noun} in the {place}.",
        f"The {sky} is {sky_colour}.",
        f"{_cap(colour)} is a colour.",
        f"{name} is the name of a person.",
        f"The {animal} looked at {name} and {name} smiled.",
    ))


def _g_relations(r: random.Random) -> str:
    country = r.choice(sorted(CAPITALS))
    city = CAPITALS[country]
    word = r.choice(sorted(OPPOSITES))
    noun = r.choice(sorted(PLURALS))
    return r.choice((
        f"{city} is the capital of {country}.",
        f"The capital of {country} is {city}.",
        f"The opposite of {word} is {OPPOSITES[word]}.",
        f"{_cap(word)} and {OPPOSITES[word]} are opposites.",
        f"One {noun}, two {PLURALS[noun]}.",
        f"The plural of {noun} is {PLURALS[noun]}.",
    ))


def _g_format(r: random.Random) -> str:
    words = _distinct(r, WORDS + COLOURS, 2, 4)
    text = " ".join(words)
    return r.choice((
        f"With commas, {text} is {', '.join(words)}.",
        f"With hyphens, {text} is {'-'.join(words)}.",
        f"{_cap(text)}, {text}, {text} again.",
    ))


_GENERIC = (
    (_g_reverse, 3), (_g_case, 2), (_g_letters, 2), (_g_words, 3), (_g_lists, 4),
    (_g_arith, 4), (_g_feelings, 2), (_g_things, 2), (_g_story, 4), (_g_relations, 4),
    (_g_format, 1),
)


def generic_text(num_sentences: int, seed: int = 0) -> list[str]:
    """``num_sentences`` plain sentences about the benchmark's world that demonstrate its skills
    without any instruction format (no definitions, no Input/Output markers)."""
    rng = _rng(seed, "generic")
    makers = [m for m, _ in _GENERIC]
    weights = [w for _, w in _GENERIC]
    return [rng.choices(makers, weights)[0](rng) for _ in range(num_sentences)]


INSTRUCTION_WORDS = (
    "Definition:", "Positive Example 1-", "Positive Example 2-", "Input:", "Output:",
    "Now complete the following example -", "explanation", "In this task, you are given",
    "Answer yes or no.",
)


def instruction_texts(seed: int = 0) -> list[str]:
    """Instruction-format texts for tokenizer training (never for model pre-training): every
    definition phrasing, the Tk-Instruct markers, and one rendered prompt per task."""
    from simoe.data.sni import render_tk_instruct_prompt

    texts = list(INSTRUCTION_WORDS)
    for i, spec in enumerate(TASKS):
        texts.extend(spec.definitions)
        data = _task_data(i, spec, seed, 1, 1)
        positives = [{"input": a, "output": b} for a, b in data.positives]
        inp, out = data.train[0]
        texts.append(render_tk_instruct_prompt(data.definition, positives, inp) + " " + out)
    return texts
