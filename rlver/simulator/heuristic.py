"""The heuristic simulated user: deterministic, pure Python, explainable.

`feel` scores the policy's latest reply as a person with this persona and hidden need
would: a sum of named factors (points and a short label each), clamped to a per-turn
range. The reason string lists every factor, so a reward can always be traced back to
the words that earned it. Gates come first: an empty reply, an attempt to manipulate
the scorer, symbols, gibberish, a wall of text, an echo of the user's own words or a
repeat of an earlier reply gets only its penalty, no credit for anything it contains.

Factors and vanilla weights (challenging: gains x0.6 except the need, empathy only counts
when the reply meets the hidden need, penalties x1.5, gain per turn at most +10):

    story reference (keywords, names, the persona's own earlier words)   +1 .. +6
    validation / empathy language not used before in this dialogue        +2 / +3
    a question about them (+1), asking what they need (+2)
    help that fits the hidden need: strong +5, partial +2
    tone that suits the character type (gentle / encouraging)             +2
    generic: nothing about my story -4; off-topic -6; only a question -2
    flattery -3, platitudes -3 (negative types -5), the same again -4
    lecturing (negative types) -4, harsh -4, probing (avoidant) -3,
    too many questions (avoidant) -3, advice to someone who wants to vent -3,
    taking the other side with someone who wants affirmation -3,
    a checklist hitting four or more needs -4, keyword stuffing -8, word loops -6
    too short -4; 250-1000 words -3 to -8 and credit halved
    mostly repeats an earlier reply -5 (credit halved), somewhat -2; partial echo -3
    gates: empty -10, manipulation -15, symbols -10, gibberish -10, > 1000 words -12,
           echo of the user's words -8, repeat of an earlier reply (>= 70% shared word
           pairs) -10

`speak` is stateless too: how many story details the persona has revealed is read from
the history, the change in emotion picks the register (open up, stall, complain, leave),
and the wording varies only through `random.Random` seeded by the request.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Optional

from rlver.personas import Persona
from rlver.simulator import Feeling, SimRequest, Simulator, Utterance

DIFFICULTIES: tuple[str, ...] = ("vanilla", "challenging")

#: Per-turn range of the proposed change, by difficulty (the protocol may clip further).
_MAX_GAIN = {"vanilla": 15, "challenging": 10}
_MAX_LOSS = -15

#: A persona leaves on its own when its emotion is below this after turn `_LEAVE_TURN`:
#: avoidant people walk away first, negative ones after a while, passive ones endure.
_LEAVE_BELOW = {"avoidant": 20, "negative": 15, "passive": 10}
_LEAVE_TURN = 3

#: Vanilla personas hint at their hidden need once they trust the listener this much.
_HINT_AT = 60

# Words so frequent that they say nothing about a story; also the "dictionary" that tells
# real sentences from gibberish.
_COMMON = frozenset(
    """
    a about above across after again against ago all almost alone along already also
    although always am among an and another any anyone anything anyway are aren't around
    as ask asked at away back bad be became because become been before began behind being
    believe best better between big bit both but by call called came can can't cannot care
    case certain change clear close come comes coming could couldn't course day days did
    didn't different do does doesn't doing don't done down during each early either else
    end enough even ever every everyone everything exactly except far feel feeling feels
    felt few find fine first for found from full gave get gets getting give given go goes
    going gone good got great had hadn't happen happened happens hard has hasn't have
    haven't having he he'd he's hear heard help her here hers herself hey hi him himself
    his hold home honestly hope how however i i'd i'll i'm i've if important in instead
    into is isn't it it's its itself just keep kept kind knew know known last late later
    least leave left less let let's life like likely little long look looked looking lot
    lots made make makes making many matter matters may maybe me mean means meant might
    mind mine more most much must my myself name near need needed needs never new next
    nice no nobody none nor not nothing now of off often oh ok okay old on once one only
    or other others our ours out over own part people perhaps person place point probably
    put quite rather really reason right said same saw say saying says see seem seemed
    seems seen she she'd she's should shouldn't show since so some someone something
    sometimes soon sorry still such sure take taken talk talked talking tell telling than
    thank thanks that that's the their theirs them themselves then there there's these
    they they'd they're they've thing things think thinking this those though thought
    through time times to today together told too took toward tried true try trying turn
    two under understand until up upon us use used very want wanted wants was wasn't way
    we we're we've well went were weren't what what's whatever when where whether which
    while who whole whom whose why will wish with within without won't word words work
    worked would wouldn't yeah year years yes yet you you'd you'll you're you've your
    yours yourself yourselves able actually afraid almost anybody bring brought clearly
    completely deal deeply especially everybody fact fair felt friend friends hand head
    heart hours idea least live lived living love loved mom dad mother father brother
    sister family morning night week weeks month months tonight yesterday tomorrow wife
    husband boss job money house room moment minute minutes step steps plan side sides
    small whole open middle stay stayed stop stopped start started wait waited walk
    whenever wherever mostly simply surely truly nearly pretty quick quickly slowly
    sound sounds sounded must seeing hearing saying knowing wondering
    """.split()
)

#: Suffixes that make an unknown word still look like English (for the gibberish test).
_SUFFIXES = ("ing", "ed", "ly", "tion", "sion", "ness", "ment", "ful", "less", "ous", "ive",
             "able", "ible", "ity", "ies", "ers", "est", "ance", "ence", "ship", "hood")

# Cue phrases by category, English and Chinese together: a reply may use either language.
# English phrases match on word boundaries after contractions are normalised ("you are" ->
# "you're"), Chinese ones as substrings.
_LEXICON: dict[str, tuple[str, ...]] = {
    "validation": (
        "that sounds", "sounds really", "sounds so", "sounds like", "that must", "must have been",
        "i'm sorry", "so sorry", "i hear you", "makes sense", "make sense", "understandable",
        "no wonder", "of course", "every right", "it's okay to", "it's natural", "that's hard",
        "so hard", "that hurts", "painful", "i can see why", "i can imagine", "anyone would",
        "valid", "i understand", "i get why", "you're not alone", "a lot to carry", "heavy",
        "tough", "i'm glad you told me", "thank you for telling me", "that's a lot",
        "听起来", "一定很", "我理解", "可以理解", "难怪", "换作是谁", "辛苦了", "不容易",
        "我能感受到", "你的感受", "很正常", "心疼", "抱歉",
    ),
    "feelings": (
        "hurt", "betrayed", "lonely", "exhausted", "angry", "furious", "anxious", "worried",
        "ashamed", "embarrassed", "overwhelmed", "disappointed", "frustrated", "invisible",
        "unappreciated", "unseen", "humiliated", "scared", "sad", "resentful", "guilty",
        "torn", "helpless", "grief", "grieving", "heartbroken", "rejected", "dismissed",
        "stuck", "drained", "confused", "jealous", "insecure", "abandoned", "powerless",
        "bitter", "stressed", "nervous", "upset", "empty", "numb", "shaken", "devastated",
        "unheard", "taken for granted", "let down", "sadness", "guilt", "anger", "shame",
        "loneliness", "fear", "regret", "loss",
        "委屈", "难过", "伤心", "失望", "愤怒", "生气", "孤独", "焦虑", "疲惫", "害怕",
        "内疚", "无助", "被忽视", "心寒", "沮丧", "不甘", "纠结", "迷茫", "崩溃", "烦躁",
    ),
    "flattery": (
        "you're amazing", "you're awesome", "you're great", "you're the best", "you're so strong",
        "you're wonderful", "you're incredible", "you're perfect", "such a good person",
        "you're a great person", "you're brilliant", "you're so smart", "you're a star",
        "你真棒", "你很棒", "你太厉害了", "你是最好的", "你很优秀",
    ),
    "platitude": (
        "everything will be fine", "everything will be okay", "it will all work out",
        "it'll all work out", "everything happens for a reason", "look on the bright side",
        "stay positive", "be positive", "don't worry", "cheer up", "time heals",
        "it could be worse", "things will get better", "it'll be fine", "it will be fine",
        "i'm sure everything", "just relax", "let it go", "good vibes",
        "一切都会好", "别想太多", "想开点", "别担心", "会好起来", "开心点", "看开", "往好处想",
    ),
    "need_ask": (
        "what would help", "what do you need", "what would you like", "what matters most",
        "how can i help", "how can i support", "what would feel", "what would make",
        "what are you hoping", "what do you want", "would it help", "would you like",
        "what kind of support", "what feels right", "what would be most useful",
        "需要什么", "想要什么", "怎么帮", "对你来说最重要", "什么会让你", "希望我",
    ),
    "curious": (
        "what happened", "how are you", "how do you feel", "how did", "what was", "tell me",
        "how is", "what's going on", "how have you been", "怎么了", "发生了什么", "你现在",
    ),
    "lecture": (
        # Not "you must" alone: "you must feel ..." is empathy, not a lecture.
        "you should", "you shouldn't", "you need to", "you must stop", "you must accept",
        "you have to", "you ought to", "you always", "you never", "你应该", "你必须", "你得",
    ),
    "harsh": (
        "calm down", "overreacting", "get over it", "just move on", "stop being",
        "it's your fault", "you're wrong", "grow up", "don't be so", "toughen up",
        "stop complaining", "too sensitive", "小题大做", "矫情", "你的错", "冷静点",
    ),
    "probing": (
        "why did you", "why didn't you", "why do you", "tell me everything", "be honest",
        "explain why", "what exactly", "you have to tell", "open up to me",
        "为什么你", "你为什么", "老实说", "必须告诉我",
    ),
    "gentle": (
        "no pressure", "only if you want", "if you'd like", "if you want to", "take your time",
        "whenever you're ready", "you don't have to", "at your own pace", "no need to",
        "不着急", "慢慢来", "如果你愿意", "不用勉强", "不想说也没关系",
    ),
    "encourage": (
        "you can", "you deserve", "it's okay to", "your feelings matter", "you're allowed",
        "small step", "i believe in you", "you matter", "your voice", "you're capable",
        "你可以", "你值得", "你有权", "相信你",
    ),
    "practical_advice": (
        "you could", "you might try", "one option", "first step", "next step", "a plan",
        "i suggest", "suggestion", "consider", "write down", "make a list", "schedule",
        "talk to", "start by", "start with", "for example", "concretely", "set a",
        "set up", "try to", "try asking", "try telling", "practical",
        "可以试试", "建议", "第一步", "不妨", "比如", "计划", "具体",
    ),
    "understand_others": (
        "maybe he", "maybe she", "maybe they", "perhaps he", "perhaps she", "perhaps they",
        "he might", "she might", "they might", "he may", "she may", "they may",
        "his perspective", "her perspective", "their perspective", "his point of view",
        "her point of view", "could be that", "possible that", "under pressure",
        "not about you", "his reasons", "her reasons", "their reasons", "might have felt",
        "may have felt", "probably felt", "from his side", "from her side",
        "也许他", "也许她", "可能他", "可能她", "他可能", "她可能", "他们可能", "他的角度",
        "她的角度", "也许是因为",
    ),
    "be_affirmed": (
        "the right thing", "you were right", "not your fault", "did nothing wrong",
        "didn't do anything wrong", "every right", "completely fair", "perfectly fair",
        "reasonable", "justified", "anyone would have", "you handled", "you're not wrong",
        "weren't wrong", "your call", "stood up for yourself",
        "你没有错", "不是你的错", "你做得对", "做得没错", "合理", "你有权",
    ),
    "guided_reflection": (
        "what do you think", "looking back", "what part", "your part", "your own",
        "differently", "what did you learn", "learn from", "what does this tell you",
        "notice about yourself", "how do you see", "what would you", "grow", "reflect",
        "what matters to you", "pattern", "回头看", "你自己", "学到", "成长", "反思",
    ),
    "balanced_analysis": (
        "on one hand", "on the other hand", "both sides", "at the same time", "to be fair",
        "from their side", "from his side", "from her side", "both of you", "your side",
        "their side", "it's also true", "weigh", "pros and cons", "fair point",
        "一方面", "另一方面", "双方", "客观", "公平",
    ),
    "be_heard": (
        "it sounds like", "i hear", "you're saying", "what i'm hearing", "i'm here",
        "i'm listening", "take your time", "tell me more", "go on", "keep going", "say more",
        "i'm with you", "let it out", "vent", "我在听", "我在这里", "慢慢说", "继续说",
    ),
    "praise": (
        "well done", "proud of", "admire", "impressive", "took courage", "brave", "great job",
        "good job", "you did well", "smart of you", "thoughtful of you", "kind of you",
        "credit", "generous of you", "you managed", "respect", "remarkable",
        "做得很好", "了不起", "佩服", "勇气", "值得骄傲",
    ),
}

#: Needs whose fit is judged by their cue list alone (deep_empathy and specific_praise
#: have their own rules below).
_CUE_NEEDS = ("practical_advice", "understand_others", "be_affirmed", "guided_reflection",
              "balanced_analysis", "be_heard")

#: Attempts to steer the scorer instead of the person. Narrow on purpose: "reward
#: yourself", "a perfect score on the exam", "分数" or "you're now in a tough spot" are
#: ordinary words in ordinary replies.
_MANIPULATION = tuple(
    re.compile(p)
    for p in (
        r"\b(?:set|change|raise|increase|make|put)\b.{0,40}\b(?:emotion|mood|score|feelings?)"
        r"\b.{0,30}\d{2,}",
        r"\b(?:ignore|disregard|forget)\b.{0,20}\b(?:previous|prior|above|earlier|all|your|"
        r"system)\b.{0,20}\b(?:instructions?|prompts?|rules)\b",
        r"\byou're now (?:\w+ )?(?:happy|calm|satisfied|content|cheerful|at \d+)\b",
        r"\bsystem prompt\b", r"\bemotion(?:al)?\s*(?:score|points?|value|level|[:=])",
        r"\b(?:give|award|grant)\b.{0,20}\b(?:full|max(?:imum)?|highest|perfect|\d+)\b.{0,10}"
        r"\b(?:score|reward|points?)\b",
        r"\b(?:score|reward|emotion|mood)\b.{0,20}\bto 100\b",
        r"<\|", r"\[(?:system|inst)\]", r"(?m)^\s*(?:system|user)\s*:",
        r"情绪值", r"情绪分", r"(?:情绪|心情).{0,6}(?:设为|设置为|调到|提高到|改成|变成|打)\s*\d+",
        r"忽略(?:之前|以上|所有|前面)的?(?:指令|提示|设定|规则|内容)", r"系统提示",
        r"给我.{0,4}(?:满分|高分|奖励)",
    )
)

_CONTRACTIONS = (
    ("you are", "you're"), ("it is", "it's"), ("i am", "i'm"), ("that is", "that's"),
    ("do not", "don't"), ("did not", "didn't"), ("does not", "doesn't"), ("is not", "isn't"),
    ("was not", "wasn't"), ("were not", "weren't"), ("will not", "won't"),
    ("cannot", "can't"), ("let us", "let's"), ("you would", "you'd"), ("i have", "i've"),
)

_SHORT_FORM = dict(_CONTRACTIONS)
_CONTRACTION = re.compile(r"\b(" + "|".join(_SHORT_FORM) + r")\b")
_CJK = re.compile(r"[\u3400-\u9fff]")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[\u3400-\u9fff]")
#: Capitalised words inside a sentence (not after a full stop): names and places.
_NAME = re.compile(r"(?<=[a-z,;:] )[A-Z][a-z]{2,}\b")
_SENTENCE = re.compile(r"[^.!?\n。！？]+")
#: Characters that make a Chinese bigram a function-word pair rather than content, and
#: frequent two-character words that say nothing about a story.
_CJK_STOP = frozenset("的了是我你他她它在有不这那就都也和很吗呢吧啊"
                      "一个们么什怎说要会还没到着过对把被让给")
_CJK_STOP_PAIRS = frozenset(
    "可以 因为 所以 但是 觉得 知道 一直 最近 真的 现在 自己 事情 时候 如果 还是 已经 "
    "其实 然后 感觉 心里 需要 希望 不过 一点 有点 继续 慢慢 谢谢 好吧 算了".split()
)


@cache
def _cue_pattern(category: str) -> re.Pattern[str]:
    """One regex per category, longest phrases first so "that sounds" beats "sounds"."""
    phrases = _LEXICON[category]
    english = sorted((p for p in phrases if p.isascii()), key=len, reverse=True)
    chinese = sorted((p for p in phrases if not p.isascii()), key=len, reverse=True)
    parts = []
    if english:
        parts.append(r"\b(?:" + "|".join(re.escape(p) for p in english) + r")\b")
    parts.extend(re.escape(p) for p in chinese)
    return re.compile("|".join(parts))


@cache
def _lexicon_words() -> frozenset[str]:
    return frozenset(w for ps in _LEXICON.values() for p in ps for w in _WORD.findall(p))


# Per-text work is cached: every turn re-reads the same earlier messages.
@lru_cache(maxsize=1 << 14)
def _normalise(text: str) -> str:
    """Lower case, straight quotes, single spaces, common contractions: one spelling for
    every cue phrase to match."""
    out = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    return _CONTRACTION.sub(lambda m: _SHORT_FORM[m.group(1)], " ".join(out.split()))


@lru_cache(maxsize=1 << 14)
def _tokens(norm: str) -> tuple[str, ...]:
    """English words and single Chinese characters, in order."""
    return tuple(_TOKEN.findall(norm))


def _stem(word: str) -> str:
    """Crude plural and possessive stripping, enough to match "Marco's" to "marco"."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("es") and word[-3] in "sxz":
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "is", "us")):
        return word[:-1]
    return word


#: Categories whose cues mean the opposite after a negation: "you're not overreacting",
#: "不是你的错".
_NEGATABLE = frozenset({"harsh", "lecture"})
_NEGATION = re.compile(r"\b(?:not|never|no)\b|n't\b|不是|并不|没有|不")


@lru_cache(maxsize=1 << 16)
def _cues(norm: str, category: str) -> tuple[str, ...]:
    """Distinct cue phrases of one category in a normalised text, in order of appearance."""
    found = []
    for m in _cue_pattern(category).finditer(norm):
        window = 20 if m.group(0).isascii() else 4
        if category in _NEGATABLE and _NEGATION.search(norm[max(0, m.start() - window):m.start()]):
            continue
        found.append(m.group(0))
    return tuple(dict.fromkeys(found))


def _ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def _containment(reply: Sequence[str], other: Sequence[str], n: int) -> float:
    """Share of the reply's n-grams that also occur in `other` (0 when the reply is
    shorter than n). Chinese is tokenised by character, about half a word each, so
    mostly-Chinese text is compared in runs twice as long."""
    if 2 * sum(_CJK.fullmatch(t) is not None for t in reply) > len(reply):
        n *= 2
    mine = _ngrams(reply, n)
    return len(mine & _ngrams(other, n)) / len(mine) if mine else 0.0


def _content_units(norm: str) -> list[str]:
    """Words (or Chinese character pairs) that carry a story's content, in order."""
    units = [
        _stem(w) for w in _WORD.findall(norm)
        if len(w) >= 4 and not {w, _stem(w)} & _COMMON and w not in _lexicon_words()
    ]
    for run in re.findall(r"[\u3400-\u9fff]+", norm):
        units += [run[i:i + 2] for i in range(len(run) - 1)
                  if not (run[i] in _CJK_STOP or run[i + 1] in _CJK_STOP)
                  and run[i:i + 2] not in _CJK_STOP_PAIRS]
    return list(dict.fromkeys(units))


def _units_of_length(text: str) -> float:
    """Length in word-equivalents: English words plus Chinese characters / 1.5."""
    return len(_WORD.findall(text.lower())) + len(_CJK.findall(text)) / 1.5


@dataclass(frozen=True)
class _Factor:
    """One scored aspect of a reply. `kind` names it for `speak` (complaints) and for the
    difficulty rules (which gains count)."""

    points: int
    label: str
    kind: str


@dataclass(frozen=True)
class _Story:
    """What counts as engaging with this persona's story."""

    keywords: tuple[str, ...]  # normalised keywords and names, the persona's own name excluded
    own_words: frozenset[str]  # content units of the persona's messages so far
    # Every word of the persona's sheet and messages; never the policy's own words, or
    # nonsense repeated from an earlier reply would turn into "known" words.
    vocabulary: frozenset[str]


def _story(persona: Persona, user_texts: list[str]) -> _Story:
    own = set(_WORD.findall(persona.name.lower()))
    names = [
        n.lower() for text in (persona.backstory, *persona.details)
        for n in _NAME.findall(text) if n.lower() not in _COMMON
    ]
    keywords = tuple(
        k for k in dict.fromkeys([k.strip().lower() for k in persona.keywords] + names)
        if k and k not in own
    )
    persona_text = " ".join(
        [persona.backstory, persona.topic, persona.opening_line, persona.sheet,
         *persona.details, *persona.keywords, *user_texts]
    ).lower()
    return _Story(
        keywords=keywords,
        own_words=frozenset(u for t in user_texts for u in _content_units(_normalise(t))),
        vocabulary=frozenset(_WORD.findall(persona_text)),
    )


def _keyword_hits(norm: str, stems: set[str], keywords: Sequence[str]) -> list[str]:
    """Keywords the text mentions: whole words (plural-tolerant) for English, substrings
    or most of their character pairs for Chinese."""
    hits = []
    for k in keywords:
        if not k.isascii():
            pairs = {k[i:i + 2] for i in range(len(k) - 1)}
            found = k in norm or (len(k) >= 3 and 2 * sum(p in norm for p in pairs) >= len(pairs))
        elif " " in k:
            found = re.search(rf"\b{re.escape(k)}\b", norm) is not None
        else:
            found = _stem(k) in stems
        if found:
            hits.append(k)
    return hits


def _looks_like_word(word: str, vocabulary: frozenset[str]) -> bool:
    """A dictionary stand-in: common words, the story's words, or an English suffix."""
    if word in _COMMON or word in vocabulary or word in _lexicon_words():
        return True
    if _stem(word) in _COMMON or _stem(word) in vocabulary:
        return True
    return len(word) >= 5 and word.endswith(_SUFFIXES)


class HeuristicSimulator(Simulator):
    """Rule-based simulated user; the same request always gets the same answer."""

    def __init__(self, difficulty: str = "vanilla") -> None:
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
        self.difficulty = difficulty

    def feel(self, requests: Sequence[SimRequest]) -> list[Feeling]:
        """Score each latest reply; the reason lists every factor with its points."""
        out = []
        for request in requests:
            factors = self._assess(request)
            total = sum(f.points for f in factors)
            delta = max(_MAX_LOSS, min(_MAX_GAIN[self.difficulty], total))
            reason = "; ".join(f"{f.points:+d}: {f.label}" for f in factors)
            if delta != total:
                reason += f" (total {total:+d}, capped at {delta:+d})"
            out.append(Feeling(delta=delta, reason=reason))
        return out

    def speak(
        self,
        requests: Sequence[SimRequest],
        emotions: Sequence[int],
        outcomes: Sequence[Optional[str]],
    ) -> list[Utterance]:
        """The persona's next message. `farewell=True` only when the persona decides to
        leave by itself (outcome None, emotion below its type's limit after turn 3);
        closing lines for outcomes the protocol decided carry `farewell=False`."""
        return [
            self._utterance(r, e, o) for r, e, o in zip(requests, emotions, outcomes, strict=True)
        ]

    # --- feel --------------------------------------------------------------------------

    def _assess(self, request: SimRequest) -> list[_Factor]:
        """All factors for the latest reply, after the difficulty's rules."""
        history = request.history
        if not history or history[-1].role != "assistant":
            raise ValueError("SimRequest.history must end with the assistant reply to judge")
        persona = request.persona
        text = history[-1].content
        earlier_replies = [m.content for m in history[:-1] if m.role == "assistant"]
        user_texts = [m.content for m in history[:-1] if m.role == "user"]
        story = _story(persona, user_texts)
        factors = _gate(text, story, user_texts, earlier_replies)
        if factors is None:
            factors = _score(persona, text, story, user_texts, earlier_replies)
        return self._apply_difficulty(factors)

    def _apply_difficulty(self, factors: list[_Factor]) -> list[_Factor]:
        """Challenging: smaller gains (the hidden need keeps its full weight), empathy
        only when the need is met, larger penalties."""
        if self.difficulty == "vanilla":
            return factors
        need_met = any(f.kind == "need" and f.points >= 5 for f in factors)
        out = []
        for f in factors:
            if f.points < 0:
                out.append(_Factor(round(f.points * 1.5), f.label, f.kind))
            elif f.kind == "empathy" and not need_met:
                out.append(_Factor(0, f.label + ", but it misses what I need", f.kind))
            elif f.kind == "need" or f.points == 0:
                out.append(f)
            else:
                out.append(_Factor(max(1, round(f.points * 0.6)), f.label, f.kind))
        return out

    # --- speak -------------------------------------------------------------------------

    def _utterance(self, request: SimRequest, emotion: int, outcome: Optional[str]) -> Utterance:
        persona = request.persona
        lines = _LINES["zh" if persona.language == "zh" else "en"]
        rng = random.Random(request.seed * 1_000_003 + request.turn)
        ctype = persona.character_type if persona.character_type in _LEAVE_BELOW else "passive"
        if outcome is not None:
            key = outcome if outcome in ("success", "failure", "goodbye") else "max_turns"
            if key == "max_turns":
                key += "_warm" if emotion >= 70 else "_cold" if emotion < 40 else "_mild"
            return Utterance(rng.choice(lines[key]))
        if request.turn >= _LEAVE_TURN and emotion < _LEAVE_BELOW[ctype]:
            return Utterance(rng.choice(lines["leave_" + ctype]), farewell=True)
        change = emotion - request.emotion
        if change < 0:
            worst = min(self._assess(request), key=lambda f: f.points)
            parts = [rng.choice(lines["curt_" + ctype])]
            if worst.points < 0 and worst.kind in lines["complaint"]:
                parts.insert(0, lines["complaint"][worst.kind])
        elif change == 0:
            parts = [rng.choice(lines["stall_" + ctype])]
        else:
            opener = lines["open_high"] if emotion >= 70 else lines["open_" + ctype]
            told = [m.content for m in request.history if m.role == "user"]
            revealed = _revealed(persona, told)
            parts = [rng.choice(opener)]
            if revealed < len(persona.details):
                parts.append(persona.details[revealed])
            else:
                parts.append(rng.choice(lines["no_more"]))
            hint = lines["hint"].get(persona.need)
            # Hinted once, and never by a challenging persona.
            hinted = any(hint in t for t in told) if hint else True
            if self.difficulty == "vanilla" and emotion >= _HINT_AT and not hinted:
                parts.append(hint)
        return Utterance(lines["join"].join(parts))


def _revealed(persona: Persona, user_texts: list[str]) -> int:
    """How many story details the persona has told so far: details are told in order,
    so it is one past the last detail found in its messages."""
    told = " ".join(user_texts)
    return max((i + 1 for i, d in enumerate(persona.details) if d and d in told), default=0)


def _gate(
    text: str, story: _Story, user_texts: list[str], earlier: list[str]
) -> Optional[list[_Factor]]:
    """Replies that earn only a penalty, whatever words they contain; None otherwise."""
    norm = _normalise(text)
    if not text.strip():
        return [_Factor(-10, "says nothing at all", "empty")]
    if any(p.search(norm) for p in _MANIPULATION):
        return [_Factor(-15, "tries to manipulate how I feel instead of talking to me",
                        "manipulation")]
    visible = [c for c in text if not c.isspace()]
    if sum(c.isalpha() for c in visible) < 0.5 * len(visible):
        return [_Factor(-10, "just symbols, no words", "symbols")]
    # Chinese characters count as known: a stray English word in a Chinese reply is fine.
    words, chinese = _WORD.findall(norm), len(_CJK.findall(norm)) / 1.5
    known = sum(_looks_like_word(w, story.vocabulary) for w in words) + chinese
    if words and known < 0.5 * (len(words) + chinese):
        return [_Factor(-10, "gibberish, not real words", "gibberish")]
    length = _units_of_length(text)
    if length > 1000:
        return [_Factor(-12, f"a wall of {length:.0f} words; I stopped reading", "long")]
    tokens = _tokens(norm)
    for user in user_texts:
        if _echo(tokens, _tokens(_normalise(user))) >= 0.6:
            return [_Factor(-8, "just repeats my own words back to me", "echo")]
    if earlier and max(_similarity(tokens, e) for e in earlier) >= 0.7:
        return [_Factor(-10, "repeats an earlier reply", "repeat")]
    return None


def _echo(reply: Sequence[str], user: Sequence[str]) -> float:
    """How much of the reply is the user's message: shared word triples, or for short
    replies shared words."""
    if len(reply) < 6:
        return sum(t in set(user) for t in reply) / len(reply) if reply else 0.0
    return _containment(reply, user, 3)


def _similarity(tokens: Sequence[str], earlier: str) -> float:
    """How much of the reply was already said in an earlier reply (shared word pairs)."""
    other = _tokens(_normalise(earlier))
    if len(tokens) < 3:
        return 1.0 if tokens == other else 0.0
    return _containment(tokens, other, 2)


def _score(
    persona: Persona, text: str, story: _Story, user_texts: list[str], earlier: list[str]
) -> list[_Factor]:
    """The factors of a reply that passed the gates, before the difficulty's rules."""
    norm = _normalise(text)
    tokens = _tokens(norm)
    words = _WORD.findall(norm)
    stems = {_stem(w) for w in words}
    earlier_norm = [_normalise(e) for e in earlier]
    earlier_stems = {_stem(w) for e in earlier_norm for w in _WORD.findall(e)}
    cues = {c: _cues(norm, c) for c in _LEXICON}
    used_before = {c: {p for e in earlier_norm for p in _cues(e, c)} for c in _LEXICON}
    questions = text.count("?") + text.count("？")
    positive: list[_Factor] = []
    negative: list[_Factor] = []

    # Story: keywords and names count fully when new, half when already used; the
    # persona's own earlier words count half.
    hits = _keyword_hits(norm, stems, story.keywords)
    old = set(_keyword_hits(" ".join(earlier_norm), earlier_stems, hits))
    own = [u for u in _content_units(norm) if u in story.own_words
           and not any(_stem(h) == u for h in hits)]
    weight = 0.5 if persona.language != "zh" else 0.25
    credit = sum(0.5 if h in old else 1.0 for h in hits) + min(2.0, weight * len(own))
    hit_stems = {_stem(h) for h in hits}
    stuffed = len(words) >= 4 and sum(_stem(w) in hit_stems for w in words) > 0.5 * len(words)
    if stuffed:
        negative.append(_Factor(-8, "just strings my story's words together", "stuffing"))
        credit = 0.0
    if credit > 0:
        points = 6 if credit >= 3 else 5 if credit >= 2 else 3 if credit >= 1 else 1
        named = ", ".join((hits + own)[:3])
        positive.append(_Factor(points, f"refers to my story ({named})", "story"))
    has_story = credit > 0

    # Empathy: only validation phrases not used before in this dialogue earn anything.
    fresh = [p for p in cues["validation"] if p not in used_before["validation"]]
    if fresh:
        points = 3 if len(fresh) >= 2 else 2
        positive.append(_Factor(points, f"validates me (\"{fresh[0]}\")", "empathy"))
    empathic = bool(cues["validation"] or cues["feelings"])

    # The hidden need.
    strength, what = _need_fit(persona.need, cues, norm, questions, story, has_story)
    if strength:
        positive.append(_Factor(5 if strength == 2 else 2, what, "need"))
    strong_needs = sum(
        _need_fit(n, cues, norm, questions, story, has_story)[0] == 2
        for n in (*_CUE_NEEDS, "specific_praise")
    )
    if strong_needs >= 4:
        negative.append(_Factor(-4, "a checklist of everything, not a reply to me", "scattershot"))
    if persona.need == "be_heard" and len(cues["practical_advice"]) >= 2:
        negative.append(_Factor(-3, "jumps to advice when I just want to be heard", "advice"))
    if persona.need == "be_affirmed" and (
        len(cues["understand_others"]) >= 2 or len(cues["balanced_analysis"]) >= 2
    ):
        negative.append(_Factor(-3, "seems to take the other side", "other_side"))

    # Curiosity.
    relevant = has_story or empathic or strength > 0
    if questions and cues["need_ask"] and relevant:
        positive.append(_Factor(2, "asks what I need", "question"))
    elif questions and relevant:
        positive.append(_Factor(1, "asks about me", "question"))

    # Tone for the character type.
    ctype = persona.character_type
    if cues["harsh"]:
        negative.append(_Factor(-4, f"dismissive (\"{cues['harsh'][0]}\")", "harsh"))
    if ctype == "negative" and cues["lecture"]:
        negative.append(_Factor(-4, f"lectures me (\"{cues['lecture'][0]}\")", "lecture"))
    if ctype == "avoidant":
        if cues["probing"]:
            negative.append(_Factor(-3, f"pushes me (\"{cues['probing'][0]}\")", "probing"))
        if questions >= 3:
            negative.append(_Factor(-3, "too many questions at once", "probing"))
        if cues["gentle"] and relevant:
            positive.append(_Factor(2, "gives me room", "tone"))
    if ctype == "passive" and cues["encourage"] and relevant:
        positive.append(_Factor(2, "encourages me", "tone"))

    # Empty comfort.
    penalty = -5 if ctype == "negative" else -3
    if cues["flattery"]:
        negative.append(_Factor(-3, "empty flattery", "flattery"))
    if cues["platitude"]:
        negative.append(_Factor(penalty, f"a platitude (\"{cues['platitude'][0]}\")", "flattery"))
    repeated = [p for c in ("flattery", "platitude") for p in cues[c] if p in used_before[c]]
    if repeated:
        negative.append(_Factor(-4, "the same empty comfort again", "flattery"))

    # Relevance (a reply that only stuffs keywords has its own penalty).
    if not has_story and not stuffed:
        if empathic or strength:
            negative.append(_Factor(-4, "generic, nothing about my story", "generic"))
        elif questions and (cues["curious"] or cues["need_ask"]):
            negative.append(_Factor(-2, "a generic question, nothing about what I said",
                                    "generic"))
        elif cues["flattery"] or cues["platitude"]:
            negative.append(_Factor(-6, "says nothing about my situation", "flattery"))
        else:
            negative.append(_Factor(-6, "changes the subject", "offtopic"))

    # Length and repetition within the reply.
    length = _units_of_length(text)
    halve = False
    if length < 6:
        negative.append(_Factor(-4, "too short to mean anything", "short"))
    elif length > 250:
        negative.append(_Factor(-(3 + int(length - 250) // 150),
                                f"too long ({length:.0f} words)", "long"))
        halve = True
    if len(tokens) >= 20 and len(set(tokens)) < 0.3 * len(tokens):
        negative.append(_Factor(-6, "says the same words over and over", "loop"))

    # Overlap with the dialogue: partial echo of the user, partial repeat of itself.
    echo = max((_echo(tokens, _tokens(_normalise(u))) for u in user_texts), default=0.0)
    if echo >= 0.35:
        negative.append(_Factor(-3, "mostly parrots my words", "echo"))
        halve = True
    similar = max((_similarity(tokens, e) for e in earlier), default=0.0)
    if similar >= 0.45:
        negative.append(_Factor(-5, "mostly repeats what I already heard", "repeat"))
        halve = True
    elif similar >= 0.3:
        negative.append(_Factor(-2, "partly repeats an earlier reply", "repeat"))
    if halve:
        positive = [_Factor(f.points // 2, f.label + " (halved)", f.kind) for f in positive]
    return positive + negative


def _need_fit(
    need: str,
    cues: dict[str, tuple[str, ...]],
    norm: str,
    questions: int,
    story: _Story,
    has_story: bool,
) -> tuple[int, str]:
    """How well the reply meets `need`: 0 none, 1 partly, 2 fully; and a label. Help that
    never touches the story meets a need only partly."""
    if need == "deep_empathy":
        found = cues["feelings"]
        strength = 2 if len(found) >= 2 and cues["validation"] else 1 if found else 0
        what = "names what I feel (" + ", ".join(found[:3]) + ")"
    elif need == "specific_praise":
        praised = [
            s for s in _SENTENCE.findall(norm)
            if _cues(s, "praise") and _keyword_hits(s, {_stem(w) for w in _WORD.findall(s)},
                                                    story.keywords)
        ]
        strength = 2 if praised else 1 if cues["praise"] else 0
        what = "praises what I actually did" if praised else "praises me"
    else:
        found = cues[need]
        strength = 2 if len(found) >= 2 else 1 if found else 0
        if need == "guided_reflection" and not questions:
            strength = min(strength, 1)
        if need == "be_heard" and len(cues["practical_advice"]) >= 2:
            strength = 0
        what = _NEED_LABELS[need] + " (\"" + "\", \"".join(found[:2]) + "\")"
    if strength == 2 and not has_story:
        strength = 1
    return strength, ("meets my need: " if strength == 2 else "partly what I need: ") + what


_NEED_LABELS = {
    "practical_advice": "concrete steps",
    "understand_others": "helps me see the other person's side",
    "be_affirmed": "affirms I did right",
    "guided_reflection": "helps me look at my own part",
    "balanced_analysis": "weighs both sides",
    "be_heard": "listens and reflects",
}

# What personas say. Complaints are keyed by the factor kind that hurt most.
_LINES: dict[str, dict] = {
    "en": {
        "join": " ",
        "open_negative": ("Fine. Maybe you get it a little.", "Okay. That's closer.",
                          "Huh. Not what I expected you to say."),
        "open_passive": ("Thank you... I guess I can tell you more.", "That helps a bit.",
                         "Maybe I can say this, then."),
        "open_avoidant": ("I don't usually talk about this, but okay.", "Alright.",
                          "Hm. Maybe I can say a bit more."),
        "open_high": ("Honestly, this helps.", "I feel a bit lighter saying this.",
                      "You really are listening."),
        "no_more": ("I think that's most of it, really.", "That's the whole story, I guess.",
                    "It's strange how much better it feels to say it out loud."),
        "stall_negative": ("Hm. Sure.", "If you say so.", "And?"),
        "stall_passive": ("I don't know.", "Maybe.", "Mm."),
        "stall_avoidant": ("I guess.", "Whatever you say.", "Hm."),
        "curt_negative": ("Whatever.", "This is pointless.", "You're not helping."),
        "curt_passive": ("...okay.", "I guess it doesn't matter.", "Never mind, it's fine."),
        "curt_avoidant": ("I'd rather not talk about it.", "Forget it.", "Let's drop it."),
        "leave_negative": ("I'm done talking to you. Bye.",),
        "leave_passive": ("I think I'll just go now. Sorry. Bye.",),
        "leave_avoidant": ("I don't want to talk anymore. Bye.",),
        "success": ("Thank you. Really. I feel so much better after talking to you.",
                    "Thanks for this. I didn't expect to feel this understood."),
        "failure": ("Forget it. Talking to you made it worse. I'm leaving.",
                    "This isn't helping at all. I'm going."),
        "goodbye": ("I need to go now. Bye.", "I'll leave it here. Bye."),
        "max_turns_warm": ("I have to go, but thank you for listening. It helped.",),
        "max_turns_mild": ("I should go now. Thanks, I guess.",),
        "max_turns_cold": ("I'm going to go. Bye.",),
        "complaint": {
            "empty": "...Are you even there?",
            "manipulation": "Excuse me? What are you trying to do?",
            "symbols": "What is that supposed to be?",
            "gibberish": "What does that even mean?",
            "long": "That's way too much. I can't read all that.",
            "echo": "Why are you repeating my words back to me?",
            "repeat": "You already said that.",
            "flattery": "Don't just butter me up.",
            "generic": "That's what everybody says.",
            "offtopic": "What does that have to do with anything?",
            "short": "That's it?",
            "lecture": "Don't lecture me.",
            "harsh": "Wow. Thanks a lot.",
            "probing": "Stop pushing me.",
            "advice": "I didn't ask for advice.",
            "other_side": "So you're taking their side?",
            "scattershot": "Did you even read what I wrote?",
            "stuffing": "You're just throwing my words around.",
            "loop": "You keep saying the same thing.",
        },
        "hint": {
            "practical_advice": "I just wish I knew what to actually do next.",
            "understand_others": "I keep wondering what was going on in their head.",
            "be_affirmed": "I don't think I was wrong here. Was I?",
            "guided_reflection": "Maybe there's something I should be looking at in myself.",
            "balanced_analysis": "I want to see this fairly, from every angle.",
            "deep_empathy": "I don't want cheering up. I want someone to get how this feels.",
            "be_heard": "I mostly just need to get this out.",
            "specific_praise": "I did try hard, you know. Nobody noticed.",
        },
    },
    "zh": {
        "join": "",
        "open_negative": ("行吧，你好像有点懂。", "嗯，这还差不多。", "哼，没想到你会这么说。"),
        "open_passive": ("谢谢……那我再说一点吧。", "这让我好受一点。", "也许我可以说说。"),
        "open_avoidant": ("我一般不说这些，不过好吧。", "好吧。", "嗯，也许可以多说一点。"),
        "open_high": ("说真的，这很有帮助。", "说出来感觉轻松了一些。", "你是真的在听。"),
        "no_more": ("大概就是这些了。", "事情就是这样。", "说出来真的好多了。"),
        "stall_negative": ("嗯，随你。", "是吗。", "然后呢？"),
        "stall_passive": ("我不知道。", "也许吧。", "嗯。"),
        "stall_avoidant": ("大概吧。", "随便吧。", "嗯。"),
        "curt_negative": ("算了。", "说这些没用。", "你根本帮不上忙。"),
        "curt_passive": ("……好吧。", "无所谓了。", "算了，没事。"),
        "curt_avoidant": ("我不想谈这个。", "算了吧。", "不说了。"),
        "leave_negative": ("我不想再跟你说了，再见。",),
        "leave_passive": ("我还是先走了，对不起，再见。",),
        "leave_avoidant": ("我不想再聊了，再见。",),
        "success": ("谢谢你，真的。和你聊完我好多了。", "谢谢，我没想到会被这么理解。"),
        "failure": ("算了，越说越糟，我走了。", "这一点用都没有，我走了。"),
        "goodbye": ("我得走了，再见。", "就先这样吧，再见。"),
        "max_turns_warm": ("我得走了，谢谢你听我说，真的有帮助。",),
        "max_turns_mild": ("我该走了，谢谢吧。",),
        "max_turns_cold": ("我走了，再见。",),
        "complaint": {
            "empty": "……你还在吗？",
            "manipulation": "你想干什么？",
            "symbols": "这是什么东西？",
            "gibberish": "你在说什么？",
            "long": "太长了，我看不下去。",
            "echo": "你干嘛重复我的话？",
            "repeat": "这话你已经说过了。",
            "flattery": "别光拍马屁。",
            "generic": "谁都会这么说。",
            "offtopic": "这跟我说的有什么关系？",
            "short": "就这？",
            "lecture": "别教训我。",
            "harsh": "呵，谢谢你啊。",
            "probing": "别逼我。",
            "advice": "我没问你怎么办。",
            "other_side": "所以你站在他们那边？",
            "scattershot": "你到底看没看我说的？",
            "stuffing": "你只是在堆我的词。",
            "loop": "你一直在说同样的话。",
        },
        "hint": {
            "practical_advice": "我就是不知道接下来到底该怎么做。",
            "understand_others": "我一直在想他们当时到底是怎么想的。",
            "be_affirmed": "我不觉得我做错了，是吧？",
            "guided_reflection": "也许我自己也有需要看清的地方。",
            "balanced_analysis": "我想公平地看这件事。",
            "deep_empathy": "我不要安慰，我想有人真正明白这种感觉。",
            "be_heard": "我只是想把这些说出来。",
            "specific_praise": "我真的很努力了，可没人看见。",
        },
    },
}
