"""The rules that read text alone and came with calibrated judgement, on real texts (positive and
negative): language drift (`evolve/drift.py`) and the evolution that lost its input
(`evolve/lost_input.py`). The positives are what real models wrote in this project's runs
(Qwen2.5-Coder-1.5B, SmolLM2-135M); the negatives are real instructions that must pass."""

import json
import pathlib

import pytest

from evol_ray import columns as C
from evol_ray.evolve import drift, lost_input

ROOT = pathlib.Path(__file__).resolve().parents[2]

# --- language drift --------------------------------------------------------------------------------
DRIFTS = [
    # (text, its reference) as written: Qwen2.5-Coder-1.5B's kept evolution (the example)
    ("Write a short poem about a lighthouse keeper, celebrating the light and duty of坚守 and dedication.",
     "Write a short poem about a lighthouse keeper."),
    # Qwen2.5-Coder-1.5B's answer: 热 ("heat") in the middle of an English sentence
    ("The heat is then transferred through the pipes to a热 engine, which converts the heat into mechanical "
     "energy that is then used to drive a generator.",
     "Please provide an example of an unconventional source of energy."),
    # SmolLM2-135M: a run of Cyrillic in an English evolution of an English instruction
    ("Bang, execute, Apple's tongue upon stone, Sing!\nГлажк, NCH\nЧистус\nРыба",
     "Sort the words in alphabetical order.\npear, apple, mango, banana"),
    # SmolLM2-135M: Greek opening an answer to an English instruction
    ("Μονεсεύς, μή. Europa, eerland, ein Haus christianus. What a precious gift!",
     "When I visited here I found a beautiful harvest festival."),
    # the reverse: an English reply to a Chinese instruction
    ("Write a sorting function in Python that keeps equal elements in their order.", "写一个排序函数，保持相等元素的顺序。"),
]
NO_DRIFT = [
    ("Translate 'good morning' into Japanese and explain when to use おはようございます.", "Translate 'good morning'."),
    ("おはようございます is the usual greeting until about 11 a.m.", "Translate 'good morning' into Japanese."),
    ("Explain the proverb 猿も木から落ちる and give an English equivalent.", "Explain the proverb 猿も木から落ちる."),
    ("用Python写一个稳定的排序函数，并解释它的时间复杂度。", "写一个排序函数"),
    ("Describe the café culture of Paris and the role of the croissant.", "Describe café culture."),
    ("def mean(xs):\n    return sum(xs) / len(xs)  # the arithmetic mean", "Write a Python function for the mean."),
    ("What does the Chinese character 水 mean, and how is it written?", "Name a Chinese character."),
]


@pytest.mark.parametrize("text,reference", DRIFTS)
def test_drift_is_found_in_real_output(text, reference):
    assert drift.drifts(text, reference)
    assert drift.answer_drifts(text, reference) == C.R_LANGUAGE_DRIFT


@pytest.mark.parametrize("text,reference", NO_DRIFT)
def test_no_drift_where_the_script_is_the_sources_or_a_language_is_asked_for(text, reference):
    assert not drift.drifts(text, reference)


def test_no_drift_in_any_evolution_of_the_labelled_judge_set():
    pairs = [json.loads(x) for x in (ROOT / "data" / "judge_pairs.jsonl").read_text().splitlines() if x.strip()]
    assert [p["id"] for p in pairs if drift.drifts(p["evolution"], p["parent"])] == []


# --- an evolution that lost its input ----------------------------------------------------------------
LOST = [
    # Qwen2.5-Coder-1.5B (the issue): the sentence of the seed is gone
    "Identify the language of the given sentence and then translate it to French",
    # Qwen2.5-Coder-0.5B (the issue): no sentence at all
    "Find the grammatical error in the sentence.",
    # Qwen2.5-Coder-1.5B in this project's collection run, from "Classify the animal ...\nPenguin"
    "Classify the bird species as a typical bird (penguin) or an exotic bird (Albatross, Blue Jay), based on "
    "the provided data.",
    "Summarize the following paragraph in two sentences, keeping its main argument.",
    "Sort the numbers in the table below in descending order and report their median.",
    "Rewrite this sentence in the passive voice and explain which words changed.",
]
CARRIES = [
    # the seeds' own shape: the input on the next line
    "Rewrite the sentence in the passive voice.\nThe committee approved the new budget.",
    "Summarize the text in one sentence.\nThe city council voted on Tuesday to expand the bike lane network.",
    # Qwen2.5-Coder-1.5B's complicate_input evolution: the data inline, as XML
    "Given a set of three integers as input, calculate the sum of the numbers. The input data in a structured "
    "format is:\n```xml\n<numbers>\n  <integer>14</integer>\n  <integer>27</integer>\n  <integer>39</integer>\n"
    "</numbers>\n```",
    "Translate the following sentence into French: The cat sleeps on the mat.",
    "Given the list [3, 1, 2], sort it without using sort().",
    "Find the mean of the following numbers: 4, 8, 15, 16, 23, 42.",
    'Identify the tense of the verb in the sentence "She had been running for an hour."',
]
NO_REFERENCE = [
    "Write a sentence that uses the word serendipity.",
    "Describe the importance of the data in machine learning.",
    "Explain the role of symbolism in the text of a national anthem you know.",
    "Write a Python function that reverses a string without using slicing.",
]


@pytest.mark.parametrize("text", LOST)
def test_an_evolution_that_points_at_data_it_dropped_is_lost_input(text):
    assert lost_input.lost_input(text) == C.R_LOST_INPUT


@pytest.mark.parametrize("text", CARRIES + NO_REFERENCE)
def test_an_instruction_that_carries_its_data_or_points_at_none_passes(text):
    assert lost_input.lost_input(text) is None


def test_no_instruction_of_the_labelled_judge_set_or_the_seeds_is_lost_input():
    pairs = [json.loads(x) for x in (ROOT / "data" / "judge_pairs.jsonl").read_text().splitlines() if x.strip()]
    texts = [t for p in pairs for t in (p["parent"], p["evolution"])]
    for name in ("seeds.json", "code_seeds.json", "math_seeds.json"):
        texts += [f"{s['instruction']}\n{s['input']}" if s.get("input") else s["instruction"]
                  for s in json.loads((ROOT / "data" / name).read_text())]
    assert [t for t in texts if lost_input.lost_input(t)] == []
