"""English glosses of the task words of prompts not in English.

The encoder (a static table distilled from all-MiniLM-L6-v2) and the lexical block read
English. For a prompt in Russian, Japanese or Arabic their evidence is close to noise:
"Напиши короткий рассказ о коте" went to medicine and "秋についての俳句を書いてください" to
code. What decides a route is mostly a handful of task words ("write", "poem", "solve",
"equation", "function"), and those translate one to one. :func:`gloss` finds them, in the
language lid.176 named, and appends their English glosses to the text, once each, so the
classifier reads the words it was trained on. The text itself is unchanged, so names, code
and numbers still count.

The lexicon below is written from dictionaries, not from any labelled set: one entry per
English task word, and per language the word forms (or stems, matched as substrings:
CJK has no spaces, and stems cover inflection) that mean it. It is small on purpose: a
wrong gloss is worse than none, so only words whose task is clear are listed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

#: Characters scanned at each end of a long prompt.
SCANNED = 2000

#: lid.176 codes read with another language's lexicon.
ALIASES: Mapping[str, str] = {"wuu": "zh", "yue": "zh", "ms": "id", "be": "ru"}

#: ``{language: {english gloss: (forms...)}}``; forms are lower case, matched as substrings.
LEXICON: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "zh": {
        "write": ("写", "寫", "撰写", "编写"),
        "poem": ("诗", "詩"),
        "story": ("故事", "小说", "小說"),
        "essay": ("作文", "论文", "論文", "文章"),
        "email": ("邮件", "郵件"),
        "letter": ("信件", "求职信"),
        "translate": ("翻译", "翻譯"),
        "summarize": ("总结", "總結", "摘要", "概括"),
        "solve": ("求解", "解方程", "解这个", "解答"),
        "equation": ("方程",),
        "calculate": ("计算", "計算", "等于多少"),
        "derivative": ("导数", "導數", "求导"),
        "integral": ("积分", "積分"),
        "probability": ("概率", "機率"),
        "math": ("数学", "數學"),
        "code": ("代码", "代碼", "程序", "程式", "编程", "脚本"),
        "function": ("函数", "函數"),
        "error": ("报错", "錯誤", "错误"),
        "doctor": ("医生", "醫生", "症状", "症狀", "治疗", "治療"),
        "law": ("法律", "合同", "律师"),
        "history": ("历史", "歷史"),
        "physics": ("物理",),
        "chemistry": ("化学", "化學"),
        "biology": ("生物",),
    },
    "ja": {
        "write": ("書いて", "書く", "作成して"),
        "poem": ("詩", "俳句", "短歌"),
        "story": ("物語", "小説", "ストーリー"),
        "essay": ("作文", "エッセイ", "論文"),
        "email": ("メール",),
        "letter": ("手紙",),
        "translate": ("翻訳", "訳して"),
        "summarize": ("要約", "まとめて"),
        "solve": ("解いて", "解け"),
        "equation": ("方程式",),
        "calculate": ("計算",),
        "derivative": ("微分",),
        "integral": ("積分",),
        "probability": ("確率",),
        "math": ("数学",),
        "code": ("コード", "プログラム", "スクリプト"),
        "function": ("関数",),
        "error": ("エラー",),
        "doctor": ("医者", "症状", "治療", "病気"),
        "law": ("法律", "契約", "弁護士"),
        "history": ("歴史",),
        "physics": ("物理",),
        "chemistry": ("化学",),
    },
    "ko": {
        "write": ("써 주", "써줘", "작성해", "작성하", "써 줘", "쓰세요"),
        "poem": ("시를", "시 한", "동시"),
        "story": ("이야기", "소설", "스토리"),
        "essay": ("에세이", "수필", "논문", "글을"),
        "email": ("이메일", "메일"),
        "letter": ("편지",),
        "translate": ("번역",),
        "summarize": ("요약",),
        "solve": ("풀어", "풀이"),
        "equation": ("방정식",),
        "calculate": ("계산",),
        "derivative": ("미분",),
        "integral": ("적분",),
        "probability": ("확률",),
        "math": ("수학",),
        "code": ("코드", "프로그램", "스크립트", "코딩"),
        "function": ("함수",),
        "error": ("에러", "오류"),
        "doctor": ("의사", "증상", "치료", "질병"),
        "law": ("법률", "계약서", "변호사"),
        "history": ("역사",),
        "physics": ("물리",),
        "chemistry": ("화학",),
    },
    "ru": {
        "write": ("напиши", "напишите", "написать", "сочини"),
        "poem": ("стих", "поэм"),
        "story": ("рассказ", "истори", "сказк"),
        "essay": ("эссе", "сочинени", "статью"),
        "email": ("письмо на почту", "email", "e-mail"),
        "letter": ("письм",),
        "translate": ("переведи", "перевод"),
        "summarize": ("кратко изложи", "резюмир", "перескажи"),
        "solve": ("реши", "решени"),
        "equation": ("уравнени",),
        "calculate": ("вычисли", "посчитай", "рассчитай", "найдите значение"),
        "derivative": ("производн",),
        "integral": ("интеграл",),
        "probability": ("вероятност",),
        "math": ("математ",),
        "code": ("код", "программ", "скрипт"),
        "function": ("функци",),
        "error": ("ошибк",),
        "doctor": ("врач", "симптом", "лечени", "болезн"),
        "law": ("закон", "договор", "юрист", "суд"),
        "physics": ("физик",),
        "chemistry": ("хими",),
        "biology": ("биолог",),
    },
    "uk": {
        "write": ("напиши", "напишіть", "написати"),
        "poem": ("вірш", "поем"),
        "story": ("оповідан", "історі", "казк"),
        "essay": ("есе", "твір"),
        "letter": ("лист",),
        "translate": ("переклад", "перекласти"),
        "solve": ("розв'яж", "розвяж", "розв’яж"),
        "equation": ("рівнян",),
        "calculate": ("обчисли", "порахуй"),
        "derivative": ("похідн",),
        "integral": ("інтеграл",),
        "math": ("математ",),
        "code": ("код", "програм", "скрипт"),
        "function": ("функці",),
        "error": ("помилк",),
        "doctor": ("лікар", "симптом", "лікуван", "хвороб"),
        "law": ("закон", "договір", "юрист", "суд"),
    },
    "es": {
        "write": ("escribe", "escribir", "redacta", "redactar"),
        "poem": ("poema", "poesía"),
        "story": ("cuento", "historia", "relato"),
        "essay": ("ensayo", "artículo"),
        "email": ("correo",),
        "letter": ("carta",),
        "translate": ("traduce", "traducir", "traducción"),
        "summarize": ("resume", "resumen", "resumir"),
        "solve": ("resuelve", "resolver"),
        "equation": ("ecuación", "ecuacion"),
        "calculate": ("calcula",),
        "derivative": ("derivada",),
        "integral": ("integral",),
        "probability": ("probabilidad",),
        "math": ("matemática",),
        "code": ("código", "codigo", "programa", "script"),
        "function": ("función", "funcion"),
        "error": ("error",),
        "doctor": ("médico", "síntoma", "tratamiento", "enfermedad"),
        "law": ("ley ", "contrato", "abogado", "legal"),
    },
    "pt": {
        "write": ("escreva", "escrever", "redija"),
        "poem": ("poema", "poesia"),
        "story": ("conto", "história", "historia"),
        "essay": ("ensaio", "redação", "artigo"),
        "email": ("e-mail",),
        "letter": ("carta",),
        "translate": ("traduza", "traduzir", "tradução"),
        "summarize": ("resuma", "resumo", "resumir"),
        "solve": ("resolva", "resolver"),
        "equation": ("equação", "equacao"),
        "calculate": ("calcule",),
        "derivative": ("derivada",),
        "integral": ("integral",),
        "code": ("código", "codigo", "programa", "script"),
        "function": ("função", "funcao"),
        "error": ("erro",),
        "doctor": ("médico", "sintoma", "tratamento", "doença"),
        "law": ("lei ", "contrato", "advogado"),
    },
    "fr": {
        "write": ("écris", "écrire", "écrivez", "rédige", "rédiger"),
        "poem": ("poème", "poésie"),
        "story": ("histoire", "conte", "nouvelle"),
        "essay": ("dissertation", "essai", "article"),
        "email": ("courriel", "e-mail", "mail"),
        "letter": ("lettre",),
        "translate": ("tradui", "traduction"),
        "summarize": ("résume", "résumé", "résumer"),
        "solve": ("résous", "résoudre", "résolvez"),
        "equation": ("équation",),
        "calculate": ("calcule",),
        "derivative": ("dérivée",),
        "integral": ("intégrale",),
        "probability": ("probabilité",),
        "math": ("mathématique",),
        "code": ("code", "programme", "script"),
        "function": ("fonction",),
        "error": ("erreur",),
        "doctor": ("médecin", "symptôme", "traitement", "maladie"),
        "law": ("loi ", "contrat", "avocat", "juridique"),
    },
    "de": {
        "write": ("schreibe", "schreiben", "verfasse"),
        "poem": ("gedicht",),
        "story": ("geschichte", "erzählung", "märchen"),
        "essay": ("aufsatz", "essay", "artikel"),
        "email": ("e-mail", "mail"),
        "letter": ("brief",),
        "translate": ("übersetze", "übersetzung"),
        "summarize": ("zusammenfass",),
        "solve": ("löse", "lösen"),
        "equation": ("gleichung",),
        "calculate": ("berechne", "rechne"),
        "derivative": ("ableitung",),
        "integral": ("integral",),
        "probability": ("wahrscheinlichkeit",),
        "math": ("mathe",),
        "code": ("code", "programm", "skript"),
        "function": ("funktion",),
        "error": ("fehler",),
        "doctor": ("arzt", "symptom", "behandlung", "krankheit"),
        "law": ("gesetz", "vertrag", "anwalt", "rechtlich"),
    },
    "it": {
        "write": ("scrivi", "scrivere", "redigi"),
        "poem": ("poesia",),
        "story": ("racconto", "storia", "fiaba"),
        "essay": ("saggio", "tema", "articolo"),
        "email": ("e-mail", "mail"),
        "letter": ("lettera",),
        "translate": ("traduci", "tradurre", "traduzione"),
        "summarize": ("riassumi", "riassunto"),
        "solve": ("risolvi", "risolvere"),
        "equation": ("equazione",),
        "calculate": ("calcola",),
        "derivative": ("derivata",),
        "integral": ("integrale",),
        "code": ("codice", "programma", "script"),
        "function": ("funzione",),
        "error": ("errore",),
        "doctor": ("medico", "sintom", "terapia", "malattia"),
        "law": ("legge", "contratto", "avvocato"),
    },
    "nl": {
        "write": ("schrijf", "schrijven"),
        "poem": ("gedicht",),
        "story": ("verhaal",),
        "essay": ("essay", "artikel", "opstel"),
        "email": ("e-mail", "mail"),
        "letter": ("brief",),
        "translate": ("vertaal",),
        "summarize": ("samenvat",),
        "solve": ("los op", "oplossen"),
        "equation": ("vergelijking",),
        "calculate": ("bereken",),
        "code": ("code", "programma", "script"),
        "function": ("functie",),
        "error": ("fout",),
        "doctor": ("arts", "dokter", "symptom", "behandeling"),
        "law": ("wet ", "contract", "advocaat"),
    },
    "pl": {
        "write": ("napisz", "napisać"),
        "poem": ("wiersz",),
        "story": ("opowiadani", "histori", "bajk"),
        "essay": ("esej", "wypracowani", "artykuł"),
        "letter": ("list",),
        "translate": ("przetłumacz", "tłumaczeni"),
        "solve": ("rozwiąż",),
        "equation": ("równani",),
        "calculate": ("oblicz",),
        "code": ("kod", "program", "skrypt"),
        "function": ("funkcj",),
        "error": ("błąd",),
    },
    "tr": {
        "write": ("yaz",),
        "poem": ("şiir",),
        "story": ("hikaye", "öykü"),
        "essay": ("deneme", "makale"),
        "letter": ("mektup",),
        "translate": ("çevir",),
        "solve": ("çöz",),
        "equation": ("denklem",),
        "calculate": ("hesapla",),
        "code": ("kod", "program"),
        "function": ("fonksiyon",),
        "error": ("hata",),
    },
    "vi": {
        "write": ("viết",),
        "poem": ("bài thơ", "thơ"),
        "story": ("câu chuyện", "truyện"),
        "essay": ("bài luận", "bài văn"),
        "translate": ("dịch",),
        "summarize": ("tóm tắt",),
        "solve": ("giải",),
        "equation": ("phương trình",),
        "calculate": ("tính",),
        "code": ("mã", "chương trình", "code"),
        "function": ("hàm",),
        "error": ("lỗi",),
    },
    "id": {
        "write": ("tulis", "buatkan"),
        "poem": ("puisi", "sajak"),
        "story": ("cerita", "cerpen"),
        "essay": ("esai", "artikel"),
        "letter": ("surat",),
        "translate": ("terjemah",),
        "summarize": ("ringkas",),
        "solve": ("selesaikan",),
        "equation": ("persamaan",),
        "calculate": ("hitung",),
        "code": ("kode", "program", "skrip"),
        "function": ("fungsi",),
    },
    "ar": {
        "write": ("اكتب", "أكتب"),
        "poem": ("قصيدة", "شعر"),
        "story": ("قصة",),
        "essay": ("مقال",),
        "letter": ("رسالة",),
        "translate": ("ترجم",),
        "summarize": ("لخص", "ملخص"),
        "solve": ("حل ",),
        "equation": ("معادلة", "المعادلة"),
        "calculate": ("احسب",),
        "code": ("كود", "برنامج", "برمجة"),
        "function": ("دالة",),
        "doctor": ("طبيب", "أعراض", "علاج"),
        "law": ("قانون", "عقد"),
    },
    "fa": {
        "write": ("بنویس",),
        "poem": ("شعر",),
        "story": ("داستان",),
        "essay": ("مقاله",),
        "translate": ("ترجمه",),
        "solve": ("حل کن",),
        "equation": ("معادله",),
        "code": ("کد", "برنامه"),
    },
    "hi": {
        "write": ("लिखें", "लिखो", "लिखिए"),
        "poem": ("कविता",),
        "story": ("कहानी",),
        "essay": ("निबंध",),
        "letter": ("पत्र",),
        "translate": ("अनुवाद",),
        "solve": ("हल",),
        "equation": ("समीकरण",),
        "calculate": ("गणना",),
        "code": ("कोड", "प्रोग्राम"),
        "function": ("फ़ंक्शन", "फंक्शन"),
    },
}


#: Letters of scripts the English encoder has no words for (Cyrillic to Devanagari, Thai,
#: Hangul; CJK; Arabic presentation forms; full-width forms). Latin, Greek (math) and
#: Vietnamese's Latin Extended Additional stay, and so do digits, symbols and code.
UNREADABLE = re.compile(
    "[\u0400-\u1dff\u2e80-\ud7ff\uf900-\ufaff\ufb50-\ufdff\ufe70-\ufeff\uff00-\uffef]+"
)


def as_read(text: str, lang: str) -> str:
    """What the English router reads of a prompt in ``lang``: :func:`gloss`, with the
    letters of scripts it cannot read (:data:`UNREADABLE`) dropped, since their word pieces
    are noise to it (Cyrillic sent requests to medicine, Hangul to code)."""
    glossed = gloss(text, lang)
    return " ".join(UNREADABLE.sub(" ", glossed).split())


def gloss(text: str, lang: str) -> str:
    """``text`` followed by the English glosses of the task words :data:`LEXICON` lists for
    ``lang`` (lid.176's code) that occur in it, once each, in lexicon order; ``text``
    itself when the language has no lexicon or none occur."""
    table = LEXICON.get(ALIASES.get(lang, lang))
    if not table:
        return text
    # The head and the tail, as the encoder reads a long prompt: the cost stays bounded.
    head = text if len(text) <= 2 * SCANNED else f"{text[:SCANNED]}\n{text[-SCANNED:]}"
    lowered = head.lower()
    found = [word for word, forms in table.items() if any(f in lowered for f in forms)]
    return f"{text}\n{' '.join(found)}" if found else text


#: Names this lexicon and reading rule: an artifact fitted on glossed text records it, and
#: a router whose lexicon changed since is refused at load (retrain it).
GLOSS_VERSION = hashlib.sha256(
    json.dumps([LEXICON, ALIASES, UNREADABLE.pattern, SCANNED], sort_keys=True).encode()
).hexdigest()[:16]
