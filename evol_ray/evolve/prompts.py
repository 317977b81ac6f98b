"""Default prompt templates, our own wording of the structure in WizardLM (arXiv 2304.12244, sec. 3.1).

In-depth evolving asks a rewriter to make an instruction harder by one method while keeping its
non-text parts (tables, code) and its input, adding only 10 to 20 words, and never echoing the
markers of the template. In-breadth evolving asks for a new, rarer instruction of the same domain,
of similar length and difficulty. The judge prompt asks whether two instructions are equal (the
"no information gain" elimination rule); the verdict is forced to one of two choices.

These are the `general` recipe's texts (`recipes.py` holds the `code` and `math` recipes'). They
are only defaults: every template is a config key (`evolution.templates.*`,
`elimination.judge_template`, `score.template`) so a user can change them without touching code. Placeholders are
Python `str.format` fields: `{instruction}`, `{method}`, `{first}`, `{second}`.
"""

from __future__ import annotations

# The general recipe's operation names, in a fixed order (the order of the weighted choice).
CONSTRAINTS = "add_constraints"
DEEPEN = "deepen"
CONCRETIZE = "concretize"
REASONING = "add_reasoning"
COMPLICATE_INPUT = "complicate_input"
BREADTH = "breadth"
DEPTH_OPS = (CONSTRAINTS, DEEPEN, CONCRETIZE, REASONING, COMPLICATE_INPUT)
OPS = DEPTH_OPS + (BREADTH,)
AUTO_OP = "auto"  # Auto Evol-Instruct's one optimized method (`evolution.auto`, `auto.py`)

ORIGINAL_MARKER = "#Original Instruction#"
REWRITTEN_MARKER = "#Rewritten Instruction#"
NEW_MARKER = "#New Instruction#"

DEPTH_TEMPLATE = (
    "You are an instruction rewriter. Rewrite the instruction below into a harder version, one that "
    "well-known AI assistants would find more demanding to answer well. The rewritten instruction "
    "must still make sense, and a person must be able to understand and answer it.\n"
    "Keep every non-text part of the original, such as tables, code and data, and keep its input "
    "if it has one.\n"
    "Make it harder in this way: {method}\n"
    "Do not make it wordy: the rewritten instruction may add only 10 to 20 words to the original.\n"
    f"Do not write the words '{ORIGINAL_MARKER}', '{REWRITTEN_MARKER}', 'original instruction' "
    "or 'rewritten instruction' in your answer. Reply with the rewritten instruction only.\n\n"
    f"{ORIGINAL_MARKER}\n{{instruction}}\n\n{REWRITTEN_MARKER}\n"
)

BREADTH_TEMPLATE = (
    "You are an instruction creator. Taking the instruction below as inspiration, write a brand "
    "new instruction. It must belong to the same domain as the original but be about a rarer, "
    "less common topic. Keep its length and difficulty close to the original's. A person must be "
    "able to understand and answer it.\n"
    f"Do not write the words '{ORIGINAL_MARKER}', '{NEW_MARKER}', 'original instruction' or "
    "'new instruction' in your answer. Reply with the new instruction only.\n\n"
    f"{ORIGINAL_MARKER}\n{{instruction}}\n\n{NEW_MARKER}\n"
)

METHODS = {
    CONSTRAINTS: "Add exactly one more constraint or requirement that the answer must satisfy.",
    DEEPEN: "If the instruction asks about a particular issue, ask about it in more depth and "
    "breadth.",
    CONCRETIZE: "Replace general concepts with more specific, concrete ones.",
    REASONING: "If the instruction can be solved with a few simple steps of thought, rewrite it so "
    "that it explicitly requires reasoning over several steps.",
    COMPLICATE_INPUT: "Add input data in a structured format, such as an XML snippet, a JSON "
    "object, a table or a piece of code, that the answer must use.",
}

JUDGE_TEMPLATE = (
    "Here are two instructions given to an AI assistant. Decide whether they are equal. They are "
    "equal only if they share the same constraints and requirements and ask for the same depth "
    "and breadth of answer.\n\n"
    "First instruction:\n{first}\n\n"
    "Second instruction:\n{second}\n\n"
    "Answer with Equal or Not Equal."
)
JUDGE_EQUAL = "Equal"
JUDGE_NOT_EQUAL = "Not Equal"

# Phrases that betray an evolution echoing its template (elimination rule 4). WizardLM's own
# markers are listed too: models trained on WizardLM data tend to emit them. "given instruction"
# and "instruction below" are this project's wording of WizardLM's "given prompt" (a real run kept
# "The above given instruction is marked as a request to ..." before they were listed).
COPIED_PROMPT_PHRASES = (
    "given prompt",
    "given instruction",
    "instruction below",
    "rewritten prompt",
    "#given prompt#",
    "#rewritten prompt#",
    "#created prompt#",
    "original instruction",
    "rewritten instruction",
    "new instruction",
    ORIGINAL_MARKER,
    REWRITTEN_MARKER,
    NEW_MARKER,
)


# Difficulty rating (`evol-ray score`; WizardLM sec. 4.5 asked ChatGPT the same: 1 to 10).
DIFFICULTY_TEMPLATE = (
    "We would like you to evaluate and rate the difficulty and complexity of the following "
    "question. You should give an overall score on a scale of 1 to 10, where a higher score "
    "indicates higher difficulty and complexity. You must just give a score without any other "
    "reasons.\n\n## Question:\n{instruction}\n\n## Score:"
)


# Answer quality (`evol-ray select`, as Deita rates it beside complexity): read like the
# difficulty score, as the expected value over the ten answers' probabilities.
QUALITY_TEMPLATE = (
    "We would like you to rate how good the answer below is as a reply to the question: how "
    "helpful, correct, relevant and complete it is. Give an overall score on a scale of 1 to 10, "
    "where a higher score indicates a better answer. You must just give a score without any "
    "other reasons.\n\n## Question:\n{instruction}\n\n## Answer:\n{response}\n\n## Score:"
)


# Auto Evol-Instruct (arXiv 2406.00770; `evolve/auto.py`), in our words: the initial evolving
# method (the `{method}` of the recipe's in-depth frame), the trajectory analysis
# ({method}, {instruction}, {evolved}, {outcome}) and the optimizer ({method}, {feedback}).
INITIAL_METHOD = (
    "Work in four steps. Step 1: list several ways to make the instruction more complex without "
    "changing its topic, such as a new constraint, a more specific case, more steps of reasoning, "
    "or data the answer must use. Step 2: choose the ways from your list that suit this "
    "instruction best. Step 3: rewrite the instruction with them, so that it stays one clear "
    "request that a person can answer. Step 4: check that it keeps all the information it "
    "started from and is harder to answer well; if it is not, fix it. Write down only the "
    "result of step 4, not the steps."
)

ANALYSIS_TEMPLATE = (
    "You are reviewing the work of an instruction rewriter. It was asked to make an instruction "
    "more complex by following this method:\n{method}\n\n"
    "The instruction it was given:\n{instruction}\n\n"
    "What it wrote:\n{evolved}\n\n"
    "What happened to it: {outcome}\n\n"
    "In one or two sentences, say what went wrong with this rewrite and which part of the method "
    "led to it: for example, it is no harder than the instruction it was given, it lost "
    "information that one needed, it answers that instruction instead of rewriting it, or it "
    "repeats words of the method. If nothing went wrong, write: No problems."
)

OPTIMIZER_TEMPLATE = (
    "You improve methods that tell an instruction rewriter how to make an instruction more "
    "complex. This is the current method:\n{method}\n\n"
    "Reviewers found these problems in rewrites made with it:\n{feedback}\n\n"
    "Write an improved method that keeps what works and avoids these problems. Address it to the "
    "rewriter as a short list of steps, in at most 150 words. Reply with the improved method only."
)


# The coherence gate (`elimination.coherence`): one question about one text, read as P(No)
# renormalized over its two answers (engine.choice_scoring). {what} says what the text is.
COHERENCE_TEMPLATE = (
    "Below is {what}. Is it written in clear, sensible language whose sentences fit together and make "
    "sense? Gibberish, made-up words, a random mix of languages or code, or phrases that do not connect "
    "are not sensible.\n\n"
    "{text}\n\n"
    "Is it clear and sensible? Answer with Yes or No."
)
COHERENCE_WHAT = {"instruction": "an instruction written for an AI assistant",
                  "response": "an answer written by an AI assistant"}
COHERENT_YES, COHERENT_NO = "Yes", "No"
COHERENCE_TEXT_LIMIT = 300  # characters of a text the gate reads (the start of a long answer)
