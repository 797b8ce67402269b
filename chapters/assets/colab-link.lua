-- Adds an "Open in Colab" link to every chapter that has a companion notebook.
-- The repository and branch come from `book.repo-url` and `book.repo-branch` in _quarto.yml, the one
-- place they are written (scripts/booktools.py reads the same two for the notebooks' links and install cell).
local function stringify(x) return x and pandoc.utils.stringify(x) or nil end

function Pandoc(doc)
  if not quarto.doc.is_format("html") then return doc end
  local input = quarto.doc.input_file or ""
  local stem = input:match("chapters/([%w%-_]+)%.qmd$")
  if not stem or stem == "references" then return doc end
  local book = doc.meta["book"]
  local url = book and stringify(book["repo-url"])
  if not url then return doc end
  local slug = url:gsub("/$", ""):match("github%.com/(.+)$")
  if not slug then return doc end
  local branch = stringify(book["repo-branch"]) or "main"
  local href = "https://colab.research.google.com/github/" .. slug .. "/blob/" .. branch .. "/notebooks/" .. stem .. ".ipynb"
  local badge = pandoc.Para({
    pandoc.Link({pandoc.Image({pandoc.Str("Open In Colab")}, "https://colab.research.google.com/assets/colab-badge.svg")}, href)
  })
  table.insert(doc.blocks, 1, badge)
  return doc
end
