#pragma once

// A fresh directory under $TMPDIR (or /tmp) for one test, removed with everything in it at the end.

#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>

#include "gtest/gtest.h"

namespace ambit::testing {

class TempDir {
 public:
  TempDir() {
    const char* base = getenv("TMPDIR");
    std::string tmpl =
        std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/ambit-test-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) ADD_FAILURE() << "mkdtemp " << tmpl << " failed";
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string PathOf(const std::string& name) const { return path_ + "/" + name; }

  // Writes name in place (open, truncate, write, close).
  void Write(const std::string& name, const std::string& content) const {
    std::ofstream out(PathOf(name), std::ios::binary | std::ios::trunc);
    out << content;
    out.close();
    ASSERT_TRUE(out.good()) << "writing " << PathOf(name);
  }
  // Writes a hidden temporary file and renames it over name, as kubectl and editors do.
  void WriteAtomically(const std::string& name, const std::string& content) const {
    Write(".tmp-" + name, content);
    ASSERT_EQ(std::rename(PathOf(".tmp-" + name).c_str(), PathOf(name).c_str()), 0);
  }
  std::string Read(const std::string& name) const {
    std::ifstream in(PathOf(name), std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  void Remove(const std::string& name) const {
    ASSERT_EQ(::unlink(PathOf(name).c_str()), 0) << "unlink " << PathOf(name);
  }

 private:
  std::string path_;
};

}  // namespace ambit::testing
