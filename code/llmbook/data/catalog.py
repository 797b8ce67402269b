"""Every data set the book, the tests and the CLI use: pinned sources, sha256, size, licence, citation (@sec-data-sources).

Each file's provenance (repository, path, commit) is the one recorded when the book's data folder was
assembled. A file that is a public file byte for byte downloads from it; a converted one is rebuilt from
its pinned upstream files by `llmbook.data.convert` and checked against the same sha256. Each upstream file
has two URLs, tried in order: GitHub's raw file at the commit, then the jsDelivr CDN's copy of it.
"""

from __future__ import annotations

from urllib.parse import quote

from llmbook.data.convert import gutenberg_books
from llmbook.data.registry import DataFile, Dataset, HubCorpus, Registry, Remote


def github(repo: str, commit: str, path: str) -> tuple[str, ...]:
    """URLs of a file of a public GitHub repository at a commit: the raw file, then jsDelivr's copy."""
    path = quote(path)
    return (f"https://raw.githubusercontent.com/{repo}/{commit}/{path}",
            f"https://cdn.jsdelivr.net/gh/{repo}@{commit}/{path}")


def up(repo: str, commit: str, path: str, sha256: str, size: int) -> Remote:
    """A pinned upstream file on GitHub."""
    return Remote(github(repo, commit, path), sha256, size)


def same(path: str, sha256: str, size: int, repo: str, commit: str, upstream_path: str) -> DataFile:
    """A data file that is a public file byte for byte."""
    return DataFile(path, sha256, size, (up(repo, commit, upstream_path, sha256, size),))


def derived(path: str, sha256: str, size: int, convert: str, inputs: list[Remote], *args, **kwargs) -> DataFile:
    """A data file rebuilt from upstream files by `llmbook.data.convert.CONVERTERS[convert]`."""
    return DataFile(path, sha256, size, tuple(inputs), convert, args, **kwargs)


MMLU_SUBJECTS = (  # the 57 subjects, in the order of the merged file
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing", "medical_genetics",
    "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy", "prehistory",
    "professional_accounting", "professional_law", "professional_medicine", "professional_psychology",
    "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)


def _gutenberg() -> Dataset:
    """129 public-domain books, each rebuilt from its pinned Project Gutenberg file (see `convert.gutenberg_clean`)."""
    books = gutenberg_books()
    return Dataset(
        "gutenberg", "Project Gutenberg, 129 English public-domain books",
        licence="public domain in the USA (Project Gutenberg texts); some authors died after 1955",
        source="RU-ECE/ECE451-Parallel and paytonison/tater-tot, per book; PG header and footer removed",
        citation="projectgutenberg",
        notes="a sample: `sources.load_corpus('gutenberg', max_docs=N)` fetches only the first N books",
        files=(
            DataFile("gutenberg/gutenberg_en.txt.xz", "4ace1eefce69c8e342b3bce3f27504d7fa89ffc22d2aa9008d2b6bea3973a8d2", 20631432,
                     tuple(up(b.source_repo, b.source_commit, b.source_path, b.source_sha256, b.source_bytes)
                           for b in books),
                     "gutenberg_corpus", content_sha256="3c94a1cac44d51be5d14a2898b9c1d75211bae132bfa44f15210b7aa9cbbba75"),
            DataFile("gutenberg/manifest.tsv", "b4fc4fce48be56aaecb83748eacdaf09725539e8dcb464b582d02420cf33d90f", 35880, (), "gutenberg_manifest"),
        ),
    )


DATASETS: tuple[Dataset, ...] = (
    Dataset(
        "tinyshakespeare", "Tiny Shakespeare (char-rnn)",
        licence="MIT (char-rnn repository)",
        source="karpathy/char-rnn, byte-identical", citation="karpathy2015charrnn",
        files=(
        same("tinyshakespeare/input.txt", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", 1115394, "karpathy/char-rnn", "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e", "data/tinyshakespeare/input.txt"),
    ),
    ),
    Dataset(
        "wikitext-2", "WikiText-2 validation (tokenized)",
        licence="CC BY-SA 3.0 (WikiText); BSD-3-Clause (pytorch/examples)",
        source="pytorch/examples, byte-identical", citation="merity2017wikitext",
        files=(
        same("wikitext-2/valid.txt", "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8", 1121681, "pytorch/examples", "77f55b912142e11fcfdf5b530231fb9c52f181e8", "word_language_model/data/wikitext-2/valid.txt"),
        same("wikitext-2/README.pytorch-examples", "ed96062abea03d4f4e8ca80f0caad8b07ec59687b8064319c7ee6f6d900b6286", 159, "pytorch/examples", "77f55b912142e11fcfdf5b530231fb9c52f181e8", "word_language_model/data/wikitext-2/README"),
    ),
    ),
    Dataset(
        "tinystories", "TinyStories samples (train, validation)",
        licence="CDLA-Sharing-1.0",
        source="s-ajaykumar/smallGPT and yuninxia/moe-routing-bench, byte-identical", citation="eldan2023tinystories",
        files=(
        same("tinystories/tinystories_train_sample.txt", "c56cfd24fb1c542b141a396184b822a4db3672abdb4c49c6aa843171c5e822a5", 944426, "s-ajaykumar/smallGPT", "b8b899265a5574abd2c19d8857039309184a357c", "data/tiny_stories.txt"),
        same("tinystories/tinystories_valid_sample.txt", "5fc1fb0113df62b567fb271806cd645ce8d75f59c58ca0b764c03d3b6ff34ca6", 794375, "yuninxia/moe-routing-bench", "bb9bb0bd461aa77cf6ab89423b758f586a6f75d1", "data/tinystories_val.txt"),
    ),
    ),
    Dataset(
        "hellaswag", "HellaSwag validation, 500 items",
        licence="MIT",
        source="klosax/hellaswag_text_data, converted to JSON Lines", citation="zellers2019hellaswag",
        files=(
        derived("hellaswag/hellaswag_val_dev.jsonl", "28a569d1944d3a8d6782b90fcd1975b37efac2385a81d3544b9f8ac9da72a06a", 431879, "hellaswag_klosax", [up("klosax/hellaswag_text_data", "1105d370f8340eac3c63a91fd1fa58e8999f9505", "hellaswag_val_full.txt.bz2", "50b637899e4263c2bc456c2dc726c95d2c8cd8e2a552ea5bd7719ce3cb03fe5b", 1964544)], 500),
    ),
    ),
    Dataset(
        "gsm8k", "GSM8K train and test (first 200)",
        licence="MIT",
        source="openai/grade-school-math; test: first 200 lines", citation="cobbe2021gsm8k",
        files=(
        same("gsm8k/train.jsonl", "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", 4166206, "openai/grade-school-math", "3101c7d5072418e28b9008a6636bde82a006892c", "grade_school_math/data/train.jsonl"),
        derived("gsm8k/test_dev.jsonl", "bd70035c7acaf107b4e0d077c605a23c3d3a0acb4342e5bc60099e6ad9ff4284", 112747, "head", [up("openai/grade-school-math", "3101c7d5072418e28b9008a6636bde82a006892c", "grade_school_math/data/test.jsonl", "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 749738)], 200),
    ),
    ),
    Dataset(
        "humaneval", "HumanEval, first 20 problems",
        licence="MIT",
        source="openai/human-eval, first 20 lines of the gunzipped file", citation="chen2021codex",
        files=(
        derived("humaneval/HumanEval_dev.jsonl", "2ca75f00255d1c111a04769c0acf634983c8f3dbdb62aadf7b33941a46a4e91c", 19423, "gunzip_head", [up("openai/human-eval", "6d43fb980f9fee3c892a914eda09951f772ad10d", "data/HumanEval.jsonl.gz", "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef", 44877)], 20),
    ),
    ),
    Dataset(
        "mmlu", "MMLU dev (5-shot exemplars), 57 subjects",
        licence="MIT",
        source="HaeChan0305/MLILAB-FedLLM (57 CSVs), merged with a subject column", citation="hendrycks2021mmlu",
        files=(
            derived("mmlu/mmlu_dev.csv", "420621798b8c201ca0ed571fa30d4dd806b93dcd70c2169f6c1d383615b540c6", 118399, "mmlu_merge", [
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/abstract_algebra_dev.csv", "f5bc2f1c0e4098ddba357af2b02919269b1a0bbab9e7c11b31c1c20da36a3263", 767),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/anatomy_dev.csv", "44f3842ff1451edabb6356feb452e7fa36fa60f71b857e1a768b4833f23c167c", 878),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/astronomy_dev.csv", "0a6f1573c324bcef3684933833f273b12f1b22c7a05eefc3bb5b2e38d8eaa034", 1991),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/business_ethics_dev.csv", "27987aed70d9550924d6af037c38597bfd67a4fe9513814cac0d052ab9a8e048", 2143),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/clinical_knowledge_dev.csv", "f2fb6824881a33ebaafe79d4c0ce6a930807d8eafe4cb2beb44132af55e2e1ea", 1123),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/college_biology_dev.csv", "450fe9d4b89b9e8909c45276e284f8ebaa6ec158046d1e0e0ad60585a6231bd5", 1451),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/college_chemistry_dev.csv", "94d6391dc090c327add1fb351de67876be8a530ae0b53b019233a5992940e5f5", 1248),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/college_computer_science_dev.csv", "3c5cf94f26d6bfa8c19df7df3214032f95d29139f6018f03d99f92f6db637d52", 2686),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/college_mathematics_dev.csv", "acc7b15a61aa4a069237a7841db7154eef6baf707a49e9c8f39fcf4735aaf459", 1414),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/college_medicine_dev.csv", "bb192ae79ca686b5f383ef49b3a196f0531e269f0b5743429198b1766741b4de", 1593),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/college_physics_dev.csv", "9918560ec781b0fb0aaa46d165b899f03bd5d933c24106ed7cf8cd4543a775f2", 1327),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/computer_security_dev.csv", "029054135a2122654866880966bb9c81b16b1301caae5a1d18092093b223caa7", 1022),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/conceptual_physics_dev.csv", "bac7a74663e5f892418034692895176873f0a6560cd2512c71da6994c7437337", 847),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/econometrics_dev.csv", "77980477843f293d2cca9d9d05f2c4d46b5d9e31393a6456378a082f23d74847", 1569),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/electrical_engineering_dev.csv", "a7283d58a362697323fb49e80bbb047004596c44e21aad2b5afa66e8081b9760", 899),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/elementary_mathematics_dev.csv", "ca4a3213aa3171042ee6b428600bc72e1d7d07e3026ed2ef12e96254916bba48", 1363),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/formal_logic_dev.csv", "9e8985f49563f9817a76a715358c501fb8c263ade6a7c1af47e1f90f1dd11513", 1676),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/global_facts_dev.csv", "6b3da0cce9ff48e7357783ad7390c488eb07bc26d00a3ceb42c81e2cd2e671b9", 1156),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/high_school_biology_dev.csv", "18b65297f30fb31daddde1f69f07aabdbd9013830436888f9c9b410ac2153aa1", 1586),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/high_school_chemistry_dev.csv", "359ab179e37c5c0475636e771877ef16af4d5df27dc0f07f9a5c0783790ba916", 1139),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/high_school_computer_science_dev.csv", "e012aba074b95dcdf9875ef956e6800da5193ee1afe409dd6e9d71beebb8129d", 2857),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/high_school_european_history_dev.csv", "8165a942ee996813de76199cc08cdddcee26128e09c99c9ecd014fed8f9a6fc6", 11493),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/high_school_geography_dev.csv", "55d2bcd20524a0d0c8b39fb9b48aec36adfdb93ca2009271a58cc02d60fc89e3", 1316),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/high_school_government_and_politics_dev.csv", "631449be21ebdc3cf14ee6399b0a463c7b3990506ca6a97079e6c1888954be27", 1696),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/high_school_macroeconomics_dev.csv", "a8326c37a99fa81631b539cb66823b08c18990a94276f60d1a2c1af78cc21d4d", 1239),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/high_school_mathematics_dev.csv", "36aa098c79f22f75415dd74c306de1faa07082257ed9fa8fe650111f78b35d74", 1216),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/high_school_microeconomics_dev.csv", "023578120d0c4b9e3c317dffcca4552494fbfc9ed1dd4daff3f2e7a4b9ca2573", 1215),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/high_school_physics_dev.csv", "fd3f3c1153270806012fbdbf9b5dedde4e63527f1b4a423cdfae521ac405fd4e", 1412),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/high_school_psychology_dev.csv", "3a055107cbe9855a68483c2a8f816aada2294a9b1c078365e88c91ed62bec745", 1830),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/high_school_statistics_dev.csv", "7948fd0d32ff30ac414c97928895da40990519c702768eb293d5f01a8d6261f7", 2467),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/high_school_us_history_dev.csv", "df7936a6c422e655f9f79c432595b87232fef93c3b13e7feb74d2e7060b560b1", 8806),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/high_school_world_history_dev.csv", "ae90f590e6452acac0b517e13b2ec285ac00004f46094fe68748fee98e496178", 4819),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/human_aging_dev.csv", "eaf8402a34af0529feed70d52eb0a4a4c707205609005e8267bdade008ca1728", 925),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/human_sexuality_dev.csv", "0800691d14de81e90be7a949be3bda268731997590bd3d9a5a14b15e88d8cdf8", 990),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/international_law_dev.csv", "712493120d7112ca187666ef8ff75886a9dfdae3aeac9b5e6a309d0c6a8c7265", 2341),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/jurisprudence_dev.csv", "67bf7563f8b90c6682e716ff1faada4be62be12ec967c8d03c4d7cac99d01158", 1220),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/logical_fallacies_dev.csv", "721672e4daf2ea761545776077c4825d90b2132ed847126fdf9b21f1b594da43", 1492),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/machine_learning_dev.csv", "25b78353edd62f6b4d17fe6e2ea391018c23e61e2a0fe6e8807eb32cea2561af", 2242),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/management_dev.csv", "bb5b1bffac34f751762e98ff6185b523202b62f42081f6b13df79b37a445254c", 809),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/marketing_dev.csv", "c3ea3899945cb1e49da36c5693fba97bbcea7029a1087843e976a987091b2311", 1402),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/medical_genetics_dev.csv", "a7cc3670c44f8c09c157476ffe1863b9e8fe1c4113d2fea9bc557b22ecb5f374", 1000),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/miscellaneous_dev.csv", "deee26422c1befff224f0da1a587c2a6051252c290e8f6ac40feaed2a7683429", 610),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/moral_disputes_dev.csv", "ce86707de1a10887c14abfaedc3daa6a6b19fa5d0216c2fc593cf8dc54c21e56", 1680),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/moral_scenarios_dev.csv", "d6c0dcd5f9fe19c5bbb8de7d3218428c587b96f932498a44820a21d55c2917ed", 2019),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/nutrition_dev.csv", "da8a99b9a9ecdc79b880c7ebaa59b30eb2f5bb043336932f7b0fb3cecaf3b8ae", 2016),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/philosophy_dev.csv", "42d9b8146f5dda534ad75bac24defcc9e41d61957cdfd9060c79d837274eccdd", 907),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/prehistory_dev.csv", "e7efa2839f8151b0de1284c21023ae9f7de8589ac5f3a6e44225d46cc5d07e79", 1803),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/professional_accounting_dev.csv", "8a27c1e2ca406f477d7755b30fea6e4affb9ec64285c57b47aa847812ce7b79d", 2089),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/professional_law_dev.csv", "0814eebe7943bfb5aa927a494b20f029a2383499fa2250a14e9b19eb6dc77199", 6551),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/professional_medicine_dev.csv", "510bd154f87714cfc9b09fef10bda4789237ddf703198c476dac684b491f2382", 3726),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/professional_psychology_dev.csv", "e1db35cdee39b0266295a5f960c6eeaa6600357b03b0d842df3d0ca5292b2b1a", 2196),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/public_relations_dev.csv", "8d9a821e0ea6a03da946b96e3031c999e52f0baaf51f1fa2fbb05924971e402f", 1411),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/security_studies_dev.csv", "128a6ccb816854ce8973888e43cefb3b21c106ba425fa93bd80dee4590e9ff16", 5276),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/sociology_dev.csv", "6221f18fd45181970c705606c7692e7218fc1aee33970fd55cd432ddfd6fe320", 1532),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/us_foreign_policy_dev.csv", "e75e2e201b5eeb949de35640c58f107bbeba4e7d53acf88688eec27b1e2b69c2", 1528),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/virology_dev.csv", "a32c63aaefafbf4227326b9701c986d40c979fb2169b3d67be7ac1f7758a8357", 1007),
        up("HaeChan0305/MLILAB-FedLLM", "d92730e8bacd7b3a61e551e015e40588e10234b4", "data/mmlu/dev/world_religions_dev.csv", "13404d8d076006e6c4aa13cd05a7ff4691be0e59b7630bdf7e9826244464ecdd", 585),
    ], MMLU_SUBJECTS),
        ),
    ),
    Dataset(
        "arc", "ARC-Easy and ARC-Challenge (train, dev)",
        licence="CC BY-SA 4.0",
        source="FormulaMonks/llm-benchmarker-suite (dev, byte-identical); nju-websoft/GenMC (train, retrieval field removed)", citation="clark2018arc",
        files=(
        derived("arc/ARC-Easy-Train.jsonl", "0b9351801c45591330c5024edd48fd47c3638fa8f87dba10b5f93ea8904c1de0", 895878, "arc_strip_para", [up("nju-websoft/GenMC", "eada4b06cf25bd95333422e1a1c02d4db3d25945", "data/arc_easy/official/train.jsonl", "7090847e1ac787e27ef1e80b89a851a21ab5cbad8717f6980b52ff1bdc0c29c8", 2908121)]),
        derived("arc/ARC-Challenge-Train.jsonl", "cdf00a50f0f06c8724a91130db5429efaf75a0523eff3452681d5e90116a59e7", 487417, "arc_strip_para", [up("nju-websoft/GenMC", "eada4b06cf25bd95333422e1a1c02d4db3d25945", "data/arc_challenge/official/train.jsonl", "207f7b3fc87a4e2a9b0f089e17bcf3c926002b8aa3277788f5fa27a05b67abb8", 1462291)]),
        same("arc/ARC-Easy-Dev.jsonl", "f4364b808a68df6bf500ce1070fb0105d40cacd2391c210deb00ff83ba75d1f4", 214423, "FormulaMonks/llm-benchmarker-suite", "5d3c8009ab8f5adab4899c34dd203cbf7afcb372", "data/ARC/ARC-e/ARC-Easy-Dev.jsonl"),
        same("arc/ARC-Challenge-Dev.jsonl", "55224364abd2477f66a9a57c5cbef109fb71d83019aa5e37aec0e7ab757746ca", 126540, "FormulaMonks/llm-benchmarker-suite", "5d3c8009ab8f5adab4899c34dd203cbf7afcb372", "data/ARC/ARC-c/ARC-Challenge-Dev.jsonl"),
    ),
    ),
    Dataset(
        "piqa", "PIQA validation, first 200",
        licence="Academic Free License v3.0",
        source="ybisk/ybisk.github.io, valid.jsonl merged with valid-labels.lst", citation="bisk2020piqa",
        files=(
        derived("piqa/piqa_valid_dev.jsonl", "3e4277be0685463914e3fc69934ed961ec93f63c9a1789edc77846cb3620718a", 59357, "piqa_merge", [up("ybisk/ybisk.github.io", "21edab439af693b961be2f069e8690a88d3b4e37", "piqa/data/valid.jsonl", "93503cc97c679e459b065c3d13e848282e44b2a25213985bed3e5d458abef72d", 495929), up("ybisk/ybisk.github.io", "21edab439af693b961be2f069e8690a88d3b4e37", "piqa/data/valid-labels.lst", "b4192dc3a2a0363d9d60ccf79800cbbe2f32ebb17726efdde6970e0b8131bceb", 3676)], 200),
    ),
    ),
    Dataset(
        "boolq", "BoolQ validation, first 300",
        licence="CC BY-SA 3.0",
        source="FormulaMonks/llm-benchmarker-suite (SuperGLUE), first 300 lines", citation="clark2019boolq",
        files=(
        derived("boolq/boolq_val_dev.jsonl", "4650d9446924b31eb1129d08441e773819f533027e6eb8bd4e27ae2002d16f2d", 211629, "head", [up("FormulaMonks/llm-benchmarker-suite", "5d3c8009ab8f5adab4899c34dd203cbf7afcb372", "data/SuperGLUE/BoolQ/val.jsonl", "21acbfbd1e7908fddd9e626bc2a6101c5a5430bda3fbf74985b979af7a63b989", 2261105)], 300),
    ),
    ),
    Dataset(
        "lambada", "LAMBADA test (OpenAI detokenized), first 500",
        licence="CC BY 4.0",
        source="Clouditera/opencompass, first 500 lines", citation="paperno2016lambada",
        files=(
        derived("lambada/lambada_test_dev.jsonl", "5000571f8b21c535d36f307be69daf3cb2e0275c2f076d43dadacbc62826278b", 180408, "head", [up("Clouditera/opencompass", "22d6f1ed0f94622199c04bc2220c34a6def5f2a2", "data/lambada/test.jsonl", "e78099e2e6a4656cce4665f3e5decb972e259618e1f67c0fa624489e3983e5e9", 1854017)], 500),
    ),
    ),
    Dataset(
        "winogrande", "WinoGrande v1.1 dev, first 200",
        licence="not stated by the source (AllenAI); verify before redistribution",
        source="Clouditera/opencompass, first 200 lines", citation="sakaguchi2020winogrande",
        files=(
        derived("winogrande/winogrande_dev_dev.jsonl", "f23ed874b6de21066083ecb42f5b25ac9d28cd8941357c8b94362294bd575f70", 43458, "head", [up("Clouditera/opencompass", "22d6f1ed0f94622199c04bc2220c34a6def5f2a2", "data/winogrande/dev.jsonl", "1aeac79cf46a3dcbe59a71ca7e5372a1490cde2b4ae2387dc56f00378104d2e8", 275682)], 200),
        same("winogrande/README.winogrande.md", "04d299cbf5022a8ecd68d95a9a384ff037b6c53452376ab52ef6d0475231e79a", 2618, "Clouditera/opencompass", "22d6f1ed0f94622199c04bc2220c34a6def5f2a2", "data/winogrande/README.md"),
    ),
    ),
    Dataset(
        "openbookqa", "OpenBookQA Main (train, dev)",
        licence="not stated by the source (AllenAI); verify before redistribution",
        source="genggui001/opencompass, byte-identical", citation="mihaylov2018openbookqa",
        files=(
        same("openbookqa/train.tsv", "a99b5eeb0df072e358d421878588f44f25faf4151d843be7ef4f4a9c0f9a920d", 1420569, "genggui001/opencompass", "5649a0f7e3d246ed58ffaef865f8b818cd8e0044", "data/openbookqa/Main/train.tsv"),
        same("openbookqa/dev.tsv", "f991ab306e5861085b1d82ede903ada8a3a2eb56261b676be809899fe3949b57", 154177, "genggui001/opencompass", "5649a0f7e3d246ed58ffaef865f8b818cd8e0044", "data/openbookqa/Main/dev.tsv"),
    ),
    ),
    Dataset(
        "mbpp", "MBPP prompt, validation and train splits",
        licence="CC BY 4.0",
        source="FormulaMonks/llm-benchmarker-suite, mbpp.jsonl split by task_id", citation="austin2021mbpp",
        files=(
        derived("mbpp/mbpp_prompt.jsonl", "fe813f3b1c0f408b4cdee4a560c4b1053cd39398d5ad91fc9ffa5cb1e34cb25e", 5489, "jsonl_id_range", [up("FormulaMonks/llm-benchmarker-suite", "5d3c8009ab8f5adab4899c34dd203cbf7afcb372", "data/mbpp/mbpp.jsonl", "0b5e07b5b40fedd01c57b7c9177b79f8b2eebd72c304c928605d91a7237d2f33", 563742)], "task_id", 1, 10),
        derived("mbpp/mbpp_validation.jsonl", "71142bc3e723d26d5b9ded84979cec6822e38e0988aef179a35eda47f6456dbd", 51301, "jsonl_id_range", [up("FormulaMonks/llm-benchmarker-suite", "5d3c8009ab8f5adab4899c34dd203cbf7afcb372", "data/mbpp/mbpp.jsonl", "0b5e07b5b40fedd01c57b7c9177b79f8b2eebd72c304c928605d91a7237d2f33", 563742)], "task_id", 511, 600),
        derived("mbpp/mbpp_train.jsonl", "3ad0217c9f73d1bc3deb5cb76066ec01b469372647c5c213bc4f611fb6e2c604", 213580, "jsonl_id_range", [up("FormulaMonks/llm-benchmarker-suite", "5d3c8009ab8f5adab4899c34dd203cbf7afcb372", "data/mbpp/mbpp.jsonl", "0b5e07b5b40fedd01c57b7c9177b79f8b2eebd72c304c928605d91a7237d2f33", 563742)], "task_id", 601, 974),
    ),
    ),
    Dataset(
        "flores200", "FLORES-200 dev (eng, deu, fra, spa, zho)",
        licence="CC BY-SA 4.0",
        source="genggui001/opencompass, byte-identical", citation="nllb2022",
        files=(
        same("flores200/eng_Latn.dev", "51a25f527fd81f428b6933d85a2f5e5544af92aa82042c7fbf0c4120327fba0a", 126287, "genggui001/opencompass", "5649a0f7e3d246ed58ffaef865f8b818cd8e0044", "data/flores200_dataset/dev/eng_Latn.dev"),
        same("flores200/deu_Latn.dev", "12fac774c6f79d966774a1829648a6e107700662e9e7b9e31ad08541382b97aa", 149933, "genggui001/opencompass", "5649a0f7e3d246ed58ffaef865f8b818cd8e0044", "data/flores200_dataset/dev/deu_Latn.dev"),
        same("flores200/fra_Latn.dev", "7c1e1043b9d8cc6cb6fd4388ce068060f36518fd3597357a381cfdbe8ce5ab00", 155574, "genggui001/opencompass", "5649a0f7e3d246ed58ffaef865f8b818cd8e0044", "data/flores200_dataset/dev/fra_Latn.dev"),
        same("flores200/spa_Latn.dev", "9a99ddc459542da2d980b21cc049e799172545938cb02a5e7c92ebd8234b2121", 153121, "genggui001/opencompass", "5649a0f7e3d246ed58ffaef865f8b818cd8e0044", "data/flores200_dataset/dev/spa_Latn.dev"),
        same("flores200/zho_Hans.dev", "ae677073476a27d6d11db642df5c18b86ca5dfcbbeefeba7d99ec93b7f5bd177", 118256, "genggui001/opencompass", "5649a0f7e3d246ed58ffaef865f8b818cd8e0044", "data/flores200_dataset/dev/zho_Hans.dev"),
        same("flores200/metadata_dev.tsv", "26e7b00913809be16aa2590e5e252f0a54832eef2de96b3948876878995ec771", 102387, "genggui001/opencompass", "5649a0f7e3d246ed58ffaef865f8b818cd8e0044", "data/flores200_dataset/metadata_dev.tsv"),
        same("flores200/README.flores200", "a1b7eb3a097fd332fd541b563d9311c609f07f18b03ac7c0ca48e3cc9b6b937b", 285, "genggui001/opencompass", "5649a0f7e3d246ed58ffaef865f8b818cd8e0044", "data/flores200_dataset/README"),
    ),
    ),
    Dataset(
        "xsum", "XSum, first 100 articles",
        licence="not stated by the source (BBC articles); research use, verify before redistribution",
        source="Clouditera/opencompass, first 100 lines", citation="narayan2018xsum",
        files=(
        derived("xsum/xsum_dev_dev.jsonl", "563d84aafb11a2cf9504dbb403b9af50ddb3b6127059cf4e7bb0764c79880ff6", 216449, "head", [up("Clouditera/opencompass", "22d6f1ed0f94622199c04bc2220c34a6def5f2a2", "data/Xsum/dev.jsonl", "d7261af29285aa5ab83ff2887866c6eb34623996cc7c07a0484ade8bd41c9669", 2326292)], 100),
    ),
    ),
    Dataset(
        "mrpc", "MRPC train (paraphrase pairs)",
        licence="not stated by the source (Microsoft Research terms); verify before redistribution",
        source="MorvanZhou/NLP-Tutorials, byte-identical", citation="dolan2005mrpc",
        files=(
        same("mrpc/msr_paraphrase_train.txt", "f2fe367690780144ff0d588e4a326334be6640820339e6931a5a394cd7129c3c", 1064134, "MorvanZhou/NLP-Tutorials", "1d1b71fc364dcbacd093fb6cd011883c33546713", "MRPC/msr_paraphrase_train.txt"),
    ),
    ),
    Dataset(
        "hh-rlhf", "HH-RLHF harmless-base test",
        licence="MIT",
        source="anthropics/hh-rlhf, byte-identical (contains offensive red-team dialogues by design)", citation="bai2022hh",
        files=(
        same("hh-rlhf/harmless-base_test.jsonl.gz", "ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03", 742801, "anthropics/hh-rlhf", "354e5c3cb8960630860dd5774a6ac2a58313bf4d", "harmless-base/test.jsonl.gz"),
    ),
    ),
    Dataset(
        "alpaca", "Alpaca seed tasks and an Alpaca-format demo set",
        licence="CC BY-NC 4.0 (seed tasks); demo set of unstated origin, treat as non-commercial",
        source="tatsu-lab/stanford_alpaca and hiyouga/LLaMA-Factory, byte-identical", citation="taori2023alpaca",
        files=(
        same("alpaca/stanford_alpaca_seed_tasks.jsonl", "7779004fa198fdf27cf70a159363879d8a26c53329e11b436af17b3941875f48", 110934, "tatsu-lab/stanford_alpaca", "761dc5bfbdeeffa89b8bff5d038781a4055f796a", "seed_tasks.jsonl"),
        same("alpaca/llamafactory_alpaca_en_demo.json", "bcc37c64db1a739a0789a1b81f251146fcf4459f903474bc9e3c21bbb5628318", 859893, "hiyouga/LLaMA-Factory", "ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30", "data/alpaca_en_demo.json"),
    ),
    ),
    _gutenberg(),
    Dataset(
        "tinystories-hub", "TinyStories, full train split on the Hugging Face hub (streamed)",
        licence="CDLA-Sharing-1.0", source="hub roneneldan/TinyStories, streamed up to the caller's sample size",
        citation="eldan2023tinystories", hub=HubCorpus("roneneldan/TinyStories", None, "train"),
    ),
    Dataset(
        "fineweb-edu", "FineWeb-Edu, 10B-token sample on the Hugging Face hub (streamed)",
        licence="ODC-By 1.0", source="hub HuggingFaceFW/fineweb-edu (sample-10BT), streamed up to the caller's sample size",
        citation="penedo2024fineweb", hub=HubCorpus("HuggingFaceFW/fineweb-edu", "sample-10BT", "train"),
    ),
)

REGISTRY = Registry(DATASETS)
